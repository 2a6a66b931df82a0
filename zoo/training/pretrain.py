"""Label-free pretraining of a patch encoder on a cohort's own tissue patches (SimCLR, Chen et al. 2020).

Two augmented views of each patch are pulled together and pushed away from the other patches of the batch
(NT-Xent loss on a small projection head, dropped afterwards). Patches come from the tiling's coordinate files
and the slides they name; nothing else of the cohort is opened, so no label, clinical value or split can reach
the encoder. Every slide of the tiling is used (transductive but label-free, as pathology encoders pretrained on
TCGA are used on TCGA).

The result is an artifact, cached like the feature cache:
``DIR/pretrained/<backbone>-in<input>-<tiling>-<key>/{model.safetensors, provenance.json}``, where the key is a
hash of everything it depends on (each tiling file's sha256, each slide's size and mtime, backbone, input size,
recipe, seed, PRETRAIN_VERSION). Anything changed gives another key, so a stale encoder is never reused. The
folder is written under a temp name and renamed into place when complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from zoo.atomic import atomic_write_json, durable_replace, make_temp_dir, remove_orphaned_temps
from zoo.data.patches import iter_patch_batches
from zoo.data.tile import load_coords, patch_read_size
from zoo.hashing import sha256_file
from zoo.models.patch_encoders import PROVENANCE_FILE, PatchEncoder
from zoo.models.patch_encoders import read_provenance as read_weights_provenance

PRETRAIN_VERSION = 2  # 2: the encoder's init is drawn from recipe.seed (1 drew it from the caller's state)
PRETRAINED_DIRNAME = "pretrained"
WEIGHTS_FILE = "model.safetensors"
METHOD = "SimCLR (NT-Xent), two views: random resized crop, flips, 90-degree rotations, colour gain and brightness"


@dataclass(frozen=True)
class PretrainRecipe:
    """model.modalities.pathology.pretraining (defaults and meanings: configs/breast_cancer_config.yaml)."""

    epochs: int
    batch_size: int
    patches_per_slide: int
    max_patches: int
    lr: float
    weight_decay: float
    temperature: float
    min_crop_scale: float
    projection_dim: int
    seed: int

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> "PretrainRecipe":
        types = {f.name: f.type for f in fields(cls)}
        missing = sorted(set(types) - set(section))
        if missing:
            raise ValueError(f"model.modalities.pathology.pretraining is missing {missing}")
        return cls(**{k: (int if types[k] == "int" else float)(section[k]) for k in types})


@dataclass(frozen=True)
class PretrainResult:
    directory: Path
    weights: Path
    provenance: dict[str, Any]
    reused: bool


def tiling_files(tiling_dir: str | os.PathLike) -> list[Path]:
    files = sorted(Path(tiling_dir).glob("*.h5"))
    if not files:
        raise FileNotFoundError(f"{tiling_dir}: no tiling files (*.h5); tile the cohort first "
                                "(python -m zoo.data.prepare or python -m zoo.data.tile)")
    return files


def inputs_record(tiling_dir: Path, backbone: str, input_size: int, recipe: PretrainRecipe) -> dict[str, Any]:
    """Everything the pretrained weights depend on (hashed into the artifact's key)."""
    slides = []
    for path in tiling_files(tiling_dir):
        _, attrs = load_coords(path)
        slide = Path(str(attrs["slide_path"]))
        st = slide.stat()
        slides.append({"tiling": path.name, "tiling_sha256": sha256_file(path), "slide": slide.name,
                       "slide_size": int(st.st_size), "slide_mtime_ns": int(st.st_mtime_ns)})
    return {"version": PRETRAIN_VERSION, "backbone": backbone, "input_size": int(input_size),
            "tiling": tiling_dir.name, "recipe": asdict(recipe), "slides": slides}


def inputs_sha256(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def artifact_key(inputs: Mapping[str, Any]) -> str:
    return inputs_sha256(inputs)[:16]


def artifact_dir(data_dir: str | os.PathLike, tiling_dir: Path, backbone: str, input_size: int, key: str) -> Path:
    return Path(data_dir) / PRETRAINED_DIRNAME / f"{backbone}-in{input_size}-{tiling_dir.name}-{key}"


def load_patches(tiling_dir: Path, recipe: PretrainRecipe, progress: bool) -> tuple[torch.Tensor, int]:
    """uint8 [N,3,P,P]: up to `patches_per_slide` random patches of every slide (seeded), at most `max_patches`
    in all; and the number of slides read."""
    files = tiling_files(tiling_dir)
    per_slide = max(1, min(recipe.patches_per_slide, math.ceil(recipe.max_patches / len(files))))
    rng = np.random.default_rng(recipe.seed)
    chunks, used = [], 0
    for path in tqdm(files, desc="pretraining patches", disable=not progress, dynamic_ncols=True):
        coords, attrs = load_coords(path)
        if not len(coords):
            continue
        pick = coords[np.sort(rng.permutation(len(coords))[:per_slide])]
        for _, patches in iter_patch_batches(str(attrs["slide_path"]), pick, int(attrs["patch_size"]),
                                             int(attrs["level"]), batch_size=len(pick), threads=0,
                                             read_size=patch_read_size(attrs)):
            chunks.append(torch.from_numpy(np.ascontiguousarray(patches)))
        used += 1
    if not chunks:
        raise ValueError(f"{tiling_dir}: the tiling files hold no patch coordinates; nothing to pretrain on")
    return torch.cat(chunks)[: recipe.max_patches], used


def augmented_view(patches: torch.Tensor, size: int, min_scale: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 [B,3,P,P] -> float [B,3,size,size] in [0,1]: crop (area min_scale..1), flip, rot90, colour gain."""
    b = patches.shape[0]
    x = patches.float() / 255.0
    u = torch.rand(b, 6, generator=generator)
    scale = torch.sqrt(min_scale + (1 - min_scale) * u[:, 0])  # side fraction
    angle = torch.floor(u[:, 1] * 4) * (math.pi / 2)
    flip = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    shift = (1 - scale)
    tx, ty = (u[:, 3] * 2 - 1) * shift, (u[:, 4] * 2 - 1) * shift
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    view = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = 1 + 0.08 * (torch.rand(b, 3, 1, 1, generator=generator) * 2 - 1)
    brightness = 0.06 * (u[:, 5].view(b, 1, 1, 1) * 2 - 1)
    return (view * gain + brightness).clamp(0, 1)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = (z @ z.T) / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def train_simclr(encoder: nn.Module, patches: torch.Tensor, recipe: PretrainRecipe, progress: bool,
                 log: Callable[[str], None]) -> list[float]:
    """Train `encoder` (a zoo PatchEncoder: float [0,1] patches in, features out) in place; returns epoch losses."""
    torch.manual_seed(recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    dim = encoder.out_dim
    head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, recipe.projection_dim))
    params = [*encoder.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    batch = min(recipe.batch_size, len(patches))
    steps_per_epoch = max(1, len(patches) // batch)
    total = recipe.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.lr, total_steps=total, pct_start=0.1)
    encoder.train()
    head.train()
    history = []
    bar = tqdm(total=total, desc="self-supervised pretraining", disable=not progress, dynamic_ncols=True)
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(patches), generator=generator)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            views = [augmented_view(patches[idx], encoder.input_size, recipe.min_crop_scale, generator)
                     for _ in range(2)]
            loss = nt_xent(head(encoder(views[0])), head(encoder(views[1])), recipe.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}")
        history.append(float(np.mean(losses)))
        log(f"pretraining epoch {epoch + 1}/{recipe.epochs}: NT-Xent loss {history[-1]:.4f}")
    bar.close()
    encoder.eval()
    return history


def read_provenance(directory: Path) -> dict[str, Any] | None:
    """The artifact's provenance when its folder is complete and the weights are those it describes."""
    weights = directory / WEIGHTS_FILE
    return read_weights_provenance(weights) if weights.is_file() else None


def ensure_pretrained(data_dir: str | os.PathLike, tiling_dir: str | os.PathLike, backbone: str, input_size: int,
                      recipe: PretrainRecipe, *, progress: bool = True,
                      log: Callable[[str], None] = print) -> PretrainResult:
    """The label-free encoder for this cohort tiling: reused when its artifact exists, else trained and stored."""
    from safetensors.torch import save_file

    tiling_dir = Path(tiling_dir)
    inputs = inputs_record(tiling_dir, backbone, input_size, recipe)
    key = artifact_key(inputs)
    directory = artifact_dir(data_dir, tiling_dir, backbone, input_size, key)
    existing = read_provenance(directory)
    if existing is not None:
        log(f"self-supervised {backbone}: reusing {directory} (trained on {existing['num_patches']:,} patches of "
            f"{existing['num_slides']} slides, weights sha256 {existing['weights_sha256'][:12]})")
        return PretrainResult(directory, directory / WEIGHTS_FILE, existing, reused=True)
    log(f"self-supervised {backbone}: no artifact for this tiling and recipe; pretraining ({METHOD}; no labels)")
    t0 = time.perf_counter()
    patches, used = load_patches(tiling_dir, recipe, progress)
    # The weights must be a function of the key's inputs alone: the random init is drawn from recipe.seed, and the
    # caller's random state is restored after, so a run that builds the artifact initialises its own model exactly
    # as a run that reuses it.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        encoder = PatchEncoder(backbone, pretrained=False, freeze=False, input_size=input_size, weights=False)
        history = train_simclr(encoder, patches, recipe, progress, log)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temps(directory.parent)
    staging = make_temp_dir(directory.parent, directory.name)
    save_file({k: v.detach().contiguous() for k, v in encoder.trunk.state_dict().items()}, str(staging / WEIGHTS_FILE))
    provenance = {
        "encoder": backbone, "method": METHOD, "labels_used": False, "key": key,
        "cohort": str(Path(data_dir).resolve()), "tiling": tiling_dir.name, "input_size": int(input_size),
        "recipe": asdict(recipe), "seed": recipe.seed, "num_slides": used, "num_patches": int(len(patches)),
        "inputs_sha256": inputs_sha256(inputs),
        "loss_history": [round(v, 5) for v in history], "train_time_s": round(time.perf_counter() - t0, 1),
        "weights_sha256": sha256_file(staging / WEIGHTS_FILE), "version": PRETRAIN_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__, "host": platform.node(),
    }
    atomic_write_json(staging / PROVENANCE_FILE, provenance)
    try:
        durable_replace(staging, directory)
    except OSError:  # another process finished the same artifact first: keep theirs
        shutil.rmtree(staging, ignore_errors=True)
        if read_provenance(directory) is None:
            raise
    log(f"self-supervised {backbone}: stored {directory} ({provenance['train_time_s']:.0f} s)")
    return PretrainResult(directory, directory / WEIGHTS_FILE, read_provenance(directory) or provenance, reused=False)
