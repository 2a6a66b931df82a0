"""MultimodalTrainer: one epoch loop shared by training and evaluation, checkpoints, early stopping, resume.

AdamW, cosine schedule with linear warmup (stepped per optimizer step), cross-entropy with label smoothing and
optional inverse-frequency class weights, AMP on CUDA only (bf16 autocast, or fp16 + GradScaler), grad clipping,
early stopping on a validation metric, TensorBoard, optional wandb, DDP-aware (only rank 0 writes files).
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import yaml
from tqdm.auto import tqdm

from zoo.atomic import atomic_write_json, atomic_write_text, remove_orphaned_temps
from zoo.checkpoint import capture_rng_state, checkpoint_payload, load_checkpoint, save_checkpoint
from zoo.checkpoint import plain as _plain
from zoo.spec import (
    AUX_PRESENCE,
    AUX_UNIMODAL_LOGITS,
    BEST_CHECKPOINT,
    CLASS_NAMES,
    CONFIG_FILE,
    KEY_LABEL,
    KEY_PATIENT_ID,
    KEY_SLIDE_IDS,
    LAST_CHECKPOINT,
    METRICS_FILE,
    PREDICTIONS_FILE,
    VAL_PREDICTIONS_FILE,
)
from zoo.training import distributed as ddp
from zoo.training.metrics import classification_metrics

# Batch keys that describe the sample rather than feed the model.
NON_INPUT_KEYS = frozenset({KEY_LABEL, KEY_PATIENT_ID, KEY_SLIDE_IDS})

# Early-stopping / model-selection metrics: name -> (key in the epoch's metric dict, default mode).
SELECTION_METRICS: dict[str, tuple[str, str]] = {
    "val_f1_macro": ("f1_macro", "max"),
    "val_auc_macro_ovr": ("auc_macro_ovr", "max"),
    "val_accuracy": ("accuracy", "max"),
    "val_loss": ("loss", "min"),
}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine_factor(step: int, steps_per_epoch: int, warmup_epochs: float, total_epochs: float) -> float:
    """LR multiplier: linear warmup over `warmup_epochs`, then cosine decay to 0 at `total_epochs`."""
    epoch = step / max(steps_per_epoch, 1)
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (step + 1) / (warmup_epochs * steps_per_epoch)
    span = max(total_epochs - warmup_epochs, 1e-8)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def inverse_frequency_weights(labels: Iterable[int], num_classes: int) -> torch.Tensor:
    """w_k = N / (K * n_k); classes absent from training get weight 0."""
    counts = np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def move_to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in NON_INPUT_KEYS}


@dataclass
class EpochOutput:
    loss: float
    labels: np.ndarray
    probs: np.ndarray
    patient_ids: list[str] = field(default_factory=list)

    def metrics(self, class_names: Sequence[str], f1_interval: bool = False) -> dict[str, Any]:
        return {"loss": self.loss, **classification_metrics(self.labels, self.probs, class_names, f1_interval)}


PROBABILITY_PREFIX = "p_"  # the probability columns of PREDICTIONS_FILE (zoo.spec): p_<class name>


def predictions_table(output: EpochOutput, class_names: Sequence[str]) -> pd.DataFrame:
    table = pd.DataFrame({"patient_id": output.patient_ids or range(len(output.labels)), "label": output.labels})
    for i, name in enumerate(class_names):
        table[f"{PROBABILITY_PREFIX}{name}"] = output.probs[:, i]
    return table


class MultimodalTrainer:
    """Train `model` (forward: batch dict -> (logits, aux)) with the resolved `config`'s `training` section.

    `train()` returns a dict with best_val_f1, best_val_auc, best_epoch, epochs_run, stopped_early, history,
    train_time_s and, when `test_loader` is given, test metrics of the best checkpoint. With `output_dir`,
    rank 0 writes best.pt / last.pt (atomic), metrics.json, config.yaml and TensorBoard events there.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Mapping[str, Any],
        train_loader: Iterable,
        val_loader: Iterable,
        *,
        output_dir: str | Path | None = None,
        entry: Any = None,
        test_loader: Iterable | None = None,
        device: str | torch.device | None = None,
        class_weights: torch.Tensor | None = None,
        preprocessing: Mapping[str, Any] | None = None,
        class_names: Sequence[str] = CLASS_NAMES,
        resume: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = config
        self.train_cfg = config.get("training", {})
        self.train_loader, self.val_loader, self.test_loader = train_loader, val_loader, test_loader
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.entry_name = getattr(entry, "name", entry) or "model"
        self.entry_version = str(getattr(entry, "version", ""))
        self.preprocessing = dict(preprocessing or {})
        self.class_names = tuple(class_names)
        self.resume = resume
        self.progress = progress and ddp.is_main_process()
        self.log = log if ddp.is_main_process() else (lambda _msg: None)
        self.on_epoch_end = on_epoch_end
        self.seed = int(self.train_cfg.get("seed", 0))
        self.device = torch.device(device) if device is not None else (
            torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))

        self.model = model.to(self.device)
        self.module = self.model  # unwrapped model: what checkpoints hold
        if ddp.is_distributed():
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)  # absent modalities leave their encoder's parameters unused

        opt_cfg = self.train_cfg.get("optimizer", {})
        opt_type = str(opt_cfg.get("type", "adamw")).lower()
        if opt_type != "adamw":
            raise ValueError(f"training.optimizer.type={opt_type!r} is not supported; use 'adamw'")
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters; check model.modalities.*.freeze")
        self.optimizer = torch.optim.AdamW(params, lr=float(opt_cfg.get("lr", 1e-4)),
                                           weight_decay=float(opt_cfg.get("weight_decay", 0.01)))

        self.epochs = int(self.train_cfg.get("epochs", 1))
        sched_cfg = self.train_cfg.get("scheduler", {})
        self.steps_per_epoch = max(len(train_loader), 1)  # type: ignore[arg-type]
        warmup = float(sched_cfg.get("warmup_epochs", 0))
        total = float(sched_cfg.get("T_max", self.epochs))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine_factor(step, self.steps_per_epoch, warmup, total))

        loss_cfg = self.train_cfg.get("loss", {})
        if class_weights is None and loss_cfg.get("class_weights", False):
            class_weights = inverse_frequency_weights(dataset_labels(train_loader), len(self.class_names))
            self.log(f"class weights (inverse frequency): {[round(w, 3) for w in class_weights.tolist()]}")
        self.criterion = nn.CrossEntropyLoss(
            weight=class_weights.to(self.device) if class_weights is not None else None,
            label_smoothing=float(loss_cfg.get("label_smoothing", 0.0)))
        self.auxiliary_weight = float(loss_cfg.get("auxiliary_weight", 0.0) or 0.0)
        # Unimodal warm start: the first warm_start_epochs train each encoder on its own auxiliary head only (the
        # fused head is left alone and no checkpoint is selected), then fusion trains on encoders that already
        # carry their modality's signal. A no-op for a model without unimodal heads (one modality).
        self.warm_start_epochs = int(self.train_cfg.get("warm_start_epochs", 0) or 0)
        if self.warm_start_epochs < 0 or (self.warm_start_epochs and self.warm_start_epochs >= self.epochs):
            raise ValueError(f"training.warm_start_epochs={self.warm_start_epochs} must be >= 0 and below "
                             f"training.epochs={self.epochs} (fusion needs epochs after the warm start)")
        # A heads-only model (fusion type late) has nothing fused to train: every epoch trains each head on its own
        # loss alone, as the single-modality entries are trained, and checkpoints are selected on the combination.
        self.heads_only = bool(getattr(self.module, "heads_only", False))
        if self.heads_only and (self.warm_start_epochs or self.auxiliary_weight):
            self.log("fusion type late: each modality's head trains on its own loss every epoch; "
                     "training.warm_start_epochs and training.loss.auxiliary_weight do not apply")
        if not getattr(self.module, "has_unimodal_heads", False) or self.heads_only:
            self.warm_start_epochs = 0
        self._warming = False

        self.amp_dtype = self._amp_dtype(self.train_cfg.get("mixed_precision", False))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.grad_clip = float(self.train_cfg.get("grad_clip", 0.0) or 0.0)

        es_cfg = self.train_cfg.get("early_stopping", {}) or {}
        metric = es_cfg.get("metric", "val_f1_macro")
        if metric not in SELECTION_METRICS:
            raise ValueError(f"training.early_stopping.metric={metric!r}; choose one of {sorted(SELECTION_METRICS)}")
        self.select_key, default_mode = SELECTION_METRICS[metric]
        self.select_name = metric
        self.mode = es_cfg.get("mode", default_mode)
        if self.mode not in ("max", "min"):
            raise ValueError(f"training.early_stopping.mode={self.mode!r}; use 'max' or 'min'")
        self.patience = int(es_cfg.get("patience", 0) or 0)

        self.start_epoch = 0
        self.best_value: float | None = None
        self.best_epoch = -1
        self.best_val: dict[str, Any] = {}
        self.bad_epochs = 0
        self.stopped_early = False
        self.history: list[dict[str, Any]] = []
        self.train_time_s = 0.0
        self.writer = None
        self.wandb_run = None
        self._best_state: dict[str, torch.Tensor] | None = None
        self._best_val_output: EpochOutput | None = None  # the best epoch's validation pass (not kept across resumes)

    # ------------------------------------------------------------------ setup helpers
    def _amp_dtype(self, setting: Any) -> torch.dtype | None:
        if self.device.type != "cuda" or not setting:
            return None
        if setting in ("fp16", "float16"):
            return torch.float16
        if setting in ("bf16", "bfloat16") or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _open_loggers(self) -> None:
        if self.output_dir is None or not ddp.is_main_process():
            return
        log_cfg = self.config.get("logging", {})
        if log_cfg.get("tensorboard", True):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.output_dir / "tensorboard"))
        wandb_cfg = log_cfg.get("wandb", {}) or {}
        if wandb_cfg.get("enabled", False):
            try:
                import wandb
            except ImportError:
                self.log("logging.wandb.enabled is true but wandb is not installed "
                         "(uv sync --extra wandb); continuing without wandb")
            else:
                self.wandb_run = wandb.init(project=wandb_cfg.get("project"), name=self.entry_name,
                                            config=dict(self.config), dir=str(self.output_dir))

    def _close_loggers(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()

    # ------------------------------------------------------------------ the epoch loop
    def run_epoch(self, loader: Iterable, *, train: bool, desc: str = "") -> EpochOutput:
        """One pass over `loader`: optimises when `train`, else evaluates. Outputs are gathered over DDP ranks."""
        self.model.train(train)
        total_loss, total_n = 0.0, 0
        labels, probs, ids = [], [], []
        bar = tqdm(loader, desc=desc, leave=False, disable=not self.progress, dynamic_ncols=True)
        with torch.set_grad_enabled(train):
            for batch in bar:
                batch = move_to_device(batch, self.device)
                target = batch[KEY_LABEL]
                with self._autocast():
                    logits, aux = self.model(model_inputs(batch))
                loss = self.criterion(logits.float(), target)
                if train:
                    self._optimise(self.training_loss(loss, aux, target))
                n = int(target.shape[0])
                total_loss += float(loss.detach()) * n
                total_n += n
                labels.append(target.detach().cpu().numpy())
                probs.append(torch.softmax(logits.detach().float(), dim=1).cpu().numpy())
                ids.extend(batch.get(KEY_PATIENT_ID, []))
                bar.set_postfix(loss=f"{total_loss / max(total_n, 1):.4f}")
        parts = ddp.gather_objects((total_loss, total_n, labels, probs, ids))
        total_loss = sum(p[0] for p in parts)
        total_n = sum(p[1] for p in parts)
        labels = [a for p in parts for a in p[2]]
        probs = [a for p in parts for a in p[3]]
        ids = [i for p in parts for i in p[4]]
        if total_n == 0:
            raise ValueError(f"{desc or 'a'} loader produced no samples; is the split empty?")
        return EpochOutput(total_loss / total_n, np.concatenate(labels), np.concatenate(probs), list(ids))

    def training_loss(self, fused_loss: torch.Tensor, aux: Mapping[str, Any], target: torch.Tensor) -> torch.Tensor:
        """What is optimised: a heads-only model, the sum of its heads' losses (each head and encoder gets exactly
        its single-modality gradient); during the warm start, the unimodal heads' loss; else the fused loss plus the
        weighted unimodal one."""
        if self.heads_only:
            return self.unimodal_loss(aux, target, reduction="sum")
        if self._warming:
            return self.unimodal_loss(aux, target)
        return fused_loss + self.auxiliary_weight * self.unimodal_loss(aux, target)

    def unimodal_loss(self, aux: Mapping[str, Any], target: torch.Tensor,
                      reduction: str = "mean") -> torch.Tensor | float:
        """The mean (or sum), over modalities, of each unimodal head's loss on the samples that have that modality
        (0 without unimodal heads). Reported losses stay the fused prediction's alone."""
        unimodal = aux.get(AUX_UNIMODAL_LOGITS)
        if not unimodal:
            return 0.0
        presence = aux[AUX_PRESENCE].bool()
        terms = [self.criterion(logits[presence[:, i]].float(), target[presence[:, i]])
                 for i, logits in enumerate(unimodal.values()) if presence[:, i].any()]
        if not terms:
            return 0.0
        return torch.stack(terms).sum() if reduction == "sum" else torch.stack(terms).mean()

    def _optimise(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def evaluate(self, loader: Iterable, desc: str = "eval") -> dict[str, Any]:
        return self.run_epoch(loader, train=False, desc=desc).metrics(self.class_names)

    # ------------------------------------------------------------------ checkpoints
    def _payload(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return checkpoint_payload(self.entry_name, self.config, self.module, self.preprocessing, epoch, metrics,
                                  version=self.entry_version, class_names=self.class_names)

    def _save_last(self, epoch: int, metrics: dict[str, Any]) -> None:
        if self.output_dir is None or not ddp.is_main_process():
            return
        save_checkpoint(self.output_dir / LAST_CHECKPOINT, {
            **self._payload(epoch, metrics),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "trainer": {
                "best_value": self.best_value, "best_epoch": self.best_epoch, "best_val": self.best_val,
                "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early, "history": self.history,
                "train_time_s": self.train_time_s,
            },
        })

    def _try_resume(self) -> None:
        path = self.output_dir / LAST_CHECKPOINT if self.output_dir is not None else None
        if path is None or not path.is_file():
            self.log(f"--resume: no checkpoint at {path}; starting from epoch 0")
            return
        state = load_checkpoint(path, map_location=self.device)
        if state["entry"] != self.entry_name:
            raise ValueError(f"{path} belongs to entry {state['entry']!r}, not {self.entry_name!r}; "
                             "use another --output-dir or drop --resume")
        if self.entry_version and str(state.get("version", "")) != self.entry_version:
            raise ValueError(f"{path} was written by version {state.get('version')!r} of {self.entry_name!r}, but "
                             f"the zoo now has version {self.entry_version!r} (its weights do not fit); "
                             "use another --output-dir or drop --resume")
        self.module.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        progress = state["trainer"]
        self.best_value, self.best_epoch = progress["best_value"], progress["best_epoch"]
        self.best_val, self.bad_epochs = progress["best_val"], progress["bad_epochs"]
        self.stopped_early, self.history = progress["stopped_early"], progress["history"]
        self.train_time_s = progress["train_time_s"]
        self.start_epoch = int(state["epoch"]) + 1
        self.log(f"resumed from {path}: continuing at epoch {self.start_epoch + 1}/{self.epochs}, "
                 f"best {self.select_name} {self.best_value} at epoch {self.best_epoch}")

    # ------------------------------------------------------------------ main loop
    def _improved(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value

    def _seed_epoch(self, epoch: int) -> None:
        # Each epoch's randomness (shuffling, dropout, augmentation) depends only on (seed, epoch, rank), so a
        # resumed run replays exactly what an uninterrupted one would have done.
        seed_everything(self.seed * 100_003 + epoch * 1_009 + ddp.rank())
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            generator.manual_seed(self.seed * 100_003 + epoch)
        dataset = getattr(self.train_loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)

    def train(self) -> dict[str, Any]:
        if self.output_dir is not None and ddp.is_main_process():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            remove_orphaned_temps(self.output_dir)  # a checkpoint half-written by a killed earlier run
            atomic_write_text(self.output_dir / CONFIG_FILE, yaml.safe_dump(_plain(self.config), sort_keys=False))
        if self.resume:
            self._try_resume()
        if self.start_epoch == 0 and self.output_dir is not None and ddp.is_main_process():
            # A run from epoch 0 owns the folder: an earlier run's results must not pass for its own (zoo.sweep
            # --resume reads a metrics.json as "finished"; export reads best.pt) if this one is stopped.
            for stale in (METRICS_FILE, PREDICTIONS_FILE, VAL_PREDICTIONS_FILE, BEST_CHECKPOINT):
                (self.output_dir / stale).unlink(missing_ok=True)
        self._open_loggers()
        try:
            epoch = self.start_epoch
            while epoch < self.epochs and not self.stopped_early:
                self._run_one_epoch(epoch)
                epoch += 1
            result = self._finish()
        finally:
            self._close_loggers()
        return result

    def _run_one_epoch(self, epoch: int) -> None:
        self._seed_epoch(epoch)
        self._warming = epoch < self.warm_start_epochs
        t0 = time.perf_counter()
        train_out = self.run_epoch(self.train_loader, train=True, desc=f"epoch {epoch + 1}/{self.epochs} train")
        val = self.run_epoch(self.val_loader, train=False, desc=f"epoch {epoch + 1}/{self.epochs} val")
        self.train_time_s += time.perf_counter() - t0
        train_m, val_m = train_out.metrics(self.class_names), val.metrics(self.class_names)
        value = val_m[self.select_key]
        improved = not self._warming and self._improved(value)
        if improved:
            self.best_value, self.best_epoch, self.best_val, self.bad_epochs = value, epoch, val_m, 0
            self._best_val_output = val
        elif not self._warming:
            self.bad_epochs += 1
        row = {
            "epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": train_m["loss"], "train_f1_macro": train_m["f1_macro"],
            "val_loss": val_m["loss"], "val_f1_macro": val_m["f1_macro"],
            "val_auc_macro_ovr": val_m["auc_macro_ovr"], "val_accuracy": val_m["accuracy"],
        }
        self.history.append(row)
        self.log(f"epoch {epoch + 1}/{self.epochs}  train loss {row['train_loss']:.4f}  "
                 f"val loss {row['val_loss']:.4f}  "
                 f"val F1 {row['val_f1_macro']:.3f}  val AUC {row['val_auc_macro_ovr']:.3f}"
                 + ("  *best*" if improved else "") + ("  (warm start: unimodal heads only)" if self._warming else ""))
        if self.writer is not None:
            for key, val_ in row.items():
                if key != "epoch" and val_ is not None and not (isinstance(val_, float) and math.isnan(val_)):
                    self.writer.add_scalar(key.replace("_", "/", 1), val_, epoch)
            self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(row, step=epoch)
        if self.patience and self.bad_epochs >= self.patience:
            self.stopped_early = True
            self.log(f"early stopping: {self.select_name} has not improved for {self.patience} epochs")
        if improved and self.output_dir is None:
            self._best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        if improved and self.output_dir is not None and ddp.is_main_process():
            save_checkpoint(self.output_dir / BEST_CHECKPOINT, self._payload(epoch, {"val": val_m}))
        self._save_last(epoch, {"val": val_m})
        ddp.barrier()
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch, row)

    def _finish(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "entry": self.entry_name,
            "version": self.entry_version,
            "best_val_f1": self.best_val.get("f1_macro", float("nan")) if self.select_key == "f1_macro"
            else max((h["val_f1_macro"] for h in self.history), default=float("nan")),
            "best_val_auc": self.best_val.get("auc_macro_ovr", float("nan")),
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "stopped_early": self.stopped_early,
            "selection_metric": self.select_name,
            "best_val": self.best_val,
            "history": self.history,
            "train_time_s": self.train_time_s,
            "num_parameters": sum(p.numel() for p in self.module.parameters()),
        }
        if self.test_loader is not None:
            self._load_best_weights()
            test = self.run_epoch(self.test_loader, train=False, desc="test")
            result["test"] = test.metrics(self.class_names, f1_interval=True)
            if self.output_dir is not None:
                # the best weights' validation probabilities too, so choices made on validation (late vs learned
                # fusion, ensembling weights) need no retraining: the best epoch's own pass, or (best epoch before a
                # resume) a new pass of the best weights
                val = self._best_val_output if self._best_val_output is not None else \
                    self.run_epoch(self.val_loader, train=False, desc="val (best weights)")
                if ddp.is_main_process():
                    atomic_write_text(self.output_dir / PREDICTIONS_FILE,
                                      predictions_table(test, self.class_names).to_csv(index=False))
                    atomic_write_text(self.output_dir / VAL_PREDICTIONS_FILE,
                                      predictions_table(val, self.class_names).to_csv(index=False))
        if self.output_dir is not None and ddp.is_main_process():
            atomic_write_json(self.output_dir / METRICS_FILE, result)
        return result

    def _load_best_weights(self) -> None:
        if self.output_dir is None:
            if self._best_state is not None:
                self.module.load_state_dict(self._best_state)
            return
        ddp.barrier()
        best = self.output_dir / BEST_CHECKPOINT
        if best.is_file():
            self.module.load_state_dict(load_checkpoint(best, map_location=self.device)["state_dict"])


def dataset_labels(loader: Any) -> list[int]:
    """Labels of a loader's dataset: its `labels` attribute when present, else read sample by sample."""
    dataset = getattr(loader, "dataset", loader)
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return [int(v) for v in labels]
    return [int(dataset[i][KEY_LABEL]) for i in range(len(dataset))]
