"""The patch-encoder registry: one frozen record per encoder, declared once, here.

A record says everything needed to build the trunk offline (family + architecture + constructor kwargs), what
the graph does to raw uint8 patches (input size, interpolation, centre-crop fraction, mean/std), how tokens
become one embedding (pooling), where its weights come from (env var, default local path, the published file
to download by hand) and where each hyper-parameter was read (`source`). This module imports nothing heavy:
`python -m zoo.encoders` lists the table without building anything.

Families (one module each, `build(record) -> (trunk, pool)`):
- `torchvision`: torchvision ResNets (`resnet18/34/50`, ImageNet weights from the local torch hub cache) and
  CLAM/TRIDENT's `resnet50_trunc` (ResNet-50 cut after layer3, average-pooled, 1024-d).
- `timm_vit`: timm VisionTransformers built from a plain architecture name with `pretrained=False` (never an
  `hf-hub:` name, which fetches a config even then).
- `zoo`: `cnn_tiny`, a 3-conv test encoder; `cnn_ssl`, a small CNN whose weights `python -m zoo.pretrain` makes
  per cohort, self-supervised and label-free (the `cpu` recipe's patch encoder).

Not registered: Phikon / Phikon-v2 (owkin) ship Hugging Face `transformers` ViTModel checkpoints, and
`transformers` is not a dependency of this project (it is not installed); their state_dict names do not match
timm's, so they cannot be built and strictly loaded offline here. CONCH (open_clip + the CONCH package) and
CTransPath (a patched timm) are left out for the same reason.

Weights, for every encoder: `model.modalities.pathology.weights: /path/file.{bin,pt,pth,safetensors}` (a
state_dict, loaded strictly), `weights: random` (explicit random init, warned once), or unset: the record's
env var (`ZOO_WEIGHTS_<NAME>`), else `$ZOO_WEIGHTS_DIR/<name>/{model.safetensors,pytorch_model.bin}`
(default dir `~/.cache/zoo/weights`), else: foundation models (`requires_weights`) are an error; torchvision
backbones follow `pretrained` (true = the torch hub cache file, false = random init, a path = that file).
Nothing is ever downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.lookup import lookup

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KAIKO_MEAN = (0.5, 0.5, 0.5)
KAIKO_STD = (0.5, 0.5, 0.5)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
LUNIT_MEAN = (0.70322989, 0.53606487, 0.66096631)
LUNIT_STD = (0.21716536, 0.26081574, 0.20723464)

TRIDENT = "mahmoodlab/TRIDENT trident/patch_encoder_models/load.py"
WEIGHTS_DIR_ENV = "ZOO_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = "~/.cache/zoo/weights"
DEFAULT_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")
POOLINGS = ("flatten", "token", "cls_mean")
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class EncoderRecord:
    name: str
    family: str                       # module zoo.models.encoders.<family> builds it
    architecture: str                 # timm model name / torchvision function / zoo builder
    embedding_dim: int
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor kwargs; "timm.layers.X"/"torch.nn.X" = classes
    input_size: int = 224             # native input size (px); the graph resizes patches to it
    interpolation: str = "bilinear"   # resize mode inside the graph (F.interpolate, antialias off)
    crop_pct: float = 1.0             # < 1: resize to input_size / crop_pct, then centre-crop input_size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pooling: str = "flatten"          # flatten (CNN) | token (timm CLS) | cls_mean (CLS ++ mean of patch tokens)
    patch_size: int | None = None     # ViT patch size: input sizes must be multiples of it
    licence: str = ""
    source: str = ""                  # where each hyper-parameter came from
    weights_hint: str = ""            # the published file to fetch by hand (never fetched here)
    requires_weights: bool = False    # foundation model: no silent random init, weights are required
    drop_prefixes: tuple[str, ...] = ()  # keys of published files the trunk does not have (classifier, cut layers)
    torchvision_weights: str | None = None  # torchvision weights enum member, e.g. "ResNet50_Weights.DEFAULT"
    weights_url: str | None = None    # that member's URL (its file is looked for in the torch hub cache only)
    self_supervised: bool = False     # weights made here, label-free, on the cohort's own patches (zoo.pretrain)

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"encoder {self.name!r}: pooling {self.pooling!r} not in {POOLINGS}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"encoder {self.name!r}: interpolation {self.interpolation!r} not in {INTERPOLATIONS}")

    @property
    def weights_env(self) -> str:
        """The env var naming this encoder's weights file (as CLAM's UNI_CKPT_PATH)."""
        return "ZOO_WEIGHTS_" + self.name.upper().replace("-", "_")

    def default_weights_paths(self) -> list[Path]:
        root = Path(os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()
        return [root / self.name / f for f in DEFAULT_WEIGHTS_FILES]


def _vit(name: str, architecture: str, dim: int, *, patch: int, source: str, licence: str, hint: str,
         **options: Any) -> EncoderRecord:
    kwargs = {"num_classes": 0, "dynamic_img_size": True, **options.pop("kwargs", {})}
    return EncoderRecord(name, "timm_vit", architecture, dim, kwargs, patch_size=patch, licence=licence,
                         source=source, weights_hint=hint, requires_weights=True, drop_prefixes=("head.",),
                         **options)


_RECORDS: tuple[EncoderRecord, ...] = (
    # --- torchvision family: existing configs' backbones, behaviour unchanged -----------------------------------
    EncoderRecord("resnet18", "torchvision", "resnet18", 512, torchvision_weights="ResNet18_Weights.DEFAULT",
                  weights_url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
                  licence="BSD-3-Clause (torchvision); ImageNet-1k weights", drop_prefixes=("fc.",),
                  source="torchvision.models.resnet18, classifier removed; ImageNet mean/std at 224 px"),
    EncoderRecord("resnet34", "torchvision", "resnet34", 512, torchvision_weights="ResNet34_Weights.DEFAULT",
                  weights_url="https://download.pytorch.org/models/resnet34-b627a593.pth",
                  licence="BSD-3-Clause (torchvision); ImageNet-1k weights", drop_prefixes=("fc.",),
                  source="torchvision.models.resnet34, classifier removed; ImageNet mean/std at 224 px"),
    EncoderRecord("resnet50", "torchvision", "resnet50", 2048, torchvision_weights="ResNet50_Weights.DEFAULT",
                  weights_url="https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
                  licence="BSD-3-Clause (torchvision); ImageNet-1k weights", drop_prefixes=("fc.",),
                  source="torchvision.models.resnet50, classifier removed; ImageNet mean/std at 224 px"),
    EncoderRecord("resnet50_trunc", "torchvision", "resnet50", 1024, {"truncate_after": "layer3"},
                  torchvision_weights="ResNet50_Weights.IMAGENET1K_V1",
                  weights_url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
                  licence="BSD-3-Clause (torchvision); ImageNet-1k weights",
                  drop_prefixes=("fc.", "layer4."),
                  weights_hint="torchvision resnet50-0676ba61.pth (IMAGENET1K_V1 = CLAM's resnet50-19c8e357 = "
                               "timm resnet50.tv_in1k)",
                  source=f"CLAM models/resnet_custom.py resnet50_baseline (layers 1-3 + AdaptiveAvgPool2d(1), "
                         f"ImageNet V1 weights); {TRIDENT} ResNet50InferenceEncoder (timm resnet50 features_only "
                         f"out_indices=[3] + avg pool, ImageNet mean/std, 224 px, bilinear)"),
    # --- zoo family ------------------------------------------------------------------------------------------------
    EncoderRecord("cnn_tiny", "zoo", "cnn_tiny", 32, licence="project code (no published weights)",
                  source="this project: 3 stride-2 conv-BN-ReLU blocks + global average pool, for tests/smoke runs"),
    EncoderRecord("cnn_ssl", "zoo", "cnn_ssl", 128, input_size=64, requires_weights=True, self_supervised=True,
                  licence="project code; weights are made per cohort (python -m zoo.pretrain)",
                  weights_hint="made by python -m zoo.pretrain --data-dir <cohort> (training makes it when absent)",
                  source="this project: 4 stride-2 conv-BN-ReLU stages (16-32-64-128) + global average pool, "
                         "SimCLR-pretrained on the cohort's own tissue patches without labels "
                         "(zoo.training.pretrain); 64 px, ImageNet mean/std"),
    # --- timm ViT family: pathology foundation models --------------------------------------------------------------
    _vit("uni_v1", "vit_large_patch16_224", 1024, patch=16,
         kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5},
         pooling="token", licence="CC-BY-NC-ND-4.0 (MahmoodLab/UNI, gated; academic non-commercial)",
         hint="pytorch_model.bin from https://huggingface.co/MahmoodLab/UNI",
         source=f"{TRIDENT} UNIInferenceEncoder (timm kwargs, Resize(224)+CenterCrop(224) bilinear, ImageNet "
                f"mean/std); MahmoodLab/UNI model card"),
    _vit("uni_v2", "vit_giant_patch14_224", 1536, patch=14,
         kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24, "init_values": 1e-5,
                 "embed_dim": 1536, "mlp_ratio": 2.66667 * 2, "no_embed_class": True,
                 "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU", "reg_tokens": 8},
         pooling="token", licence="CC-BY-NC-ND-4.0 (MahmoodLab/UNI2-h, gated; academic non-commercial)",
         hint="pytorch_model.bin from https://huggingface.co/MahmoodLab/UNI2-h",
         source=f"{TRIDENT} UNIv2InferenceEncoder (timm kwargs, Resize(224)+CenterCrop(224) bilinear, ImageNet "
                f"mean/std); MahmoodLab/UNI2-h model card"),
    _vit("virchow2", "vit_huge_patch14_224", 2560, patch=14,
         kwargs={"img_size": 224, "init_values": 1e-5, "reg_tokens": 4, "mlp_ratio": 5.3375, "global_pool": "",
                 "mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"},
         pooling="cls_mean", interpolation="bicubic",
         licence="CC-BY-NC-ND-4.0 (paige-ai/Virchow2, gated; non-commercial)",
         hint="pytorch_model.bin from https://huggingface.co/paige-ai/Virchow2",
         source=f"{TRIDENT} Virchow2InferenceEncoder (timm kwargs; output = CLS ++ mean of tokens after the 4 "
                f"registers = 2 x 1280; Resize(224) bicubic, ImageNet mean/std); paige-ai/Virchow2 model card"),
    _vit("gigapath", "vit_giant_patch14_dinov2", 1536, patch=16,
         kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536, "depth": 40,
                 "num_heads": 24, "mlp_ratio": 5.33334},
         pooling="token", interpolation="bicubic", crop_pct=224 / 256,
         licence="Apache-2.0 weights with Prov-GigaPath terms (prov-gigapath/prov-gigapath, gated; research use)",
         hint="pytorch_model.bin from https://huggingface.co/prov-gigapath/prov-gigapath",
         source=f"{TRIDENT} GigaPathInferenceEncoder (timm kwargs over vit_giant_patch14_dinov2's defaults: "
                f"init_values 1e-5, SwiGLUPacked, SiLU; Resize(256) bicubic + CenterCrop(224), ImageNet mean/std); "
                f"prov-gigapath model card"),
    _vit("hoptimus0", "vit_giant_patch14_reg4_dinov2", 1536, patch=14,
         kwargs={"img_size": 224, "global_pool": "token", "init_values": 1e-5},
         pooling="token", mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
         licence="Apache-2.0 (bioptimus/H-optimus-0, gated)",
         hint="pytorch_model.bin from https://huggingface.co/bioptimus/H-optimus-0",
         source=f"{TRIDENT} HOptimus0InferenceEncoder (timm kwargs, Resize(224) bilinear, its own mean/std); "
                f"bioptimus/H-optimus-0 model card"),
    *(
        _vit(f"kaiko_{variant}", architecture, dim, patch=patch,
             kwargs={"img_size": img_size}, pooling="token", mean=KAIKO_MEAN, std=KAIKO_STD,
             licence="kaiko.ai towards_large_pathology_fms: see the kaiko-ai repository/model card for terms",
             hint=f"model.safetensors from https://huggingface.co/1aurent/{architecture}."
                  f"kaiko_ai_towards_large_pathology_fms",
             source=f"{TRIDENT} Kaiko{variant[3:].upper()}InferenceEncoder (architecture, img_size "
                    f"{img_size}, 224 px eval transform bilinear, kaiko mean/std 0.5)")
        for variant, architecture, dim, patch, img_size in (
            ("vits8", "vit_small_patch8_224", 384, 8, 224),
            ("vits16", "vit_small_patch16_224", 384, 16, 224),
            ("vitb8", "vit_base_patch8_224", 768, 8, 224),
            ("vitb16", "vit_base_patch16_224", 768, 16, 224),
            # built at 518 px (37x37 positional grid, as published); run at 224 px with dynamic_img_size
            ("vitl14", "vit_large_patch14_reg4_dinov2", 1024, 14, 518),
        )
    ),
    _vit("lunit_vits8", "vit_small_patch8_224", 384, patch=8, kwargs={"img_size": 224},
         pooling="token", interpolation="bicubic", mean=LUNIT_MEAN, std=LUNIT_STD,
         licence="Lunit non-commercial (lunit-non-commercial)",
         hint="model.safetensors from https://huggingface.co/1aurent/vit_small_patch8_224.lunit_dino",
         source=f"{TRIDENT} LunitS8InferenceEncoder (architecture, 224 px, timm data config: bicubic); mean/std "
                f"from Lunit-io/benchmark-ssl-pathology and kaiko-ai/eva's lunit backbone"),
)

ENCODERS: dict[str, EncoderRecord] = {}
for _record in _RECORDS:
    if _record.name in ENCODERS:
        raise ValueError(f"encoder {_record.name!r} registered twice")
    ENCODERS[_record.name] = _record


def get_record(name: str) -> EncoderRecord:
    return lookup(ENCODERS, name, "pathology backbone")
