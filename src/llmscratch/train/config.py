"""The training settings (TrainConfig), their JSON form, the learning-rate schedule and config files."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from llmscratch.utils import UserError, atomic_write_text


@dataclass
class TrainConfig:
    """How to train: optimisation, schedule, evaluation, checkpoints and logging. Saved as JSON beside checkpoints."""

    out_dir: str = "runs/train"
    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (None: run all epochs)
    max_seconds: float | None = None  # stop (evaluate, save) once training has run this long
    batch_size: int = 8  # micro-batch per process
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 4e-4
    min_lr: float | None = None  # floor of the cosine decay (None: lr / 10)
    schedule: str = "cosine"  # "cosine" (linear warmup, cosine decay to min_lr) or "constant" (warmup, then lr)
    warmup_steps: int = 0
    weight_decay: float = 0.1  # only on matrices (parameters with dim >= 2)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = 1.0  # max global gradient norm (None or 0: no clipping)
    eval_every: int = 50  # optimizer steps between evaluations (0: only at the end)
    eval_batches: int | None = None  # limit on validation batches per evaluation (None: all)
    eval_train_batches: int = 0  # > 0: also measure train loss in eval mode on this many train batches
    patience: int | None = None  # early stopping: evaluations without a better val loss before stopping
    save_every: int | None = None  # optimizer steps between checkpoints (None: at each evaluation)
    keep_last: int = 3  # newest checkpoints kept
    export_models: bool = True  # write OUT/final and OUT/best (best val loss) as model folders (load_model layout)
    seed: int = 123
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA (ignored elsewhere)
    compile: bool = False  # torch.compile the model for training
    sample_prompt: str | None = "Every effort moves you"
    sample_tokens: int = 30
    log_every: int = 1  # optimizer steps between train records in metrics.jsonl
    tensorboard: bool = False
    progress: bool = True  # tqdm progress bar
    extra: dict = field(default_factory=dict)  # free-form run description (data, model preset...) saved with it

    def validate(self) -> None:
        """Raise UserError for settings that cannot work, before any work starts."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.max_seconds is None or self.max_seconds > 0, f"max_seconds must be > 0, got {self.max_seconds}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.min_lr is None or 0 <= self.min_lr <= self.lr, f"min_lr must be in [0, lr], got {self.min_lr}"),
            (self.schedule in ("cosine", "constant"), f"schedule must be cosine or constant, got {self.schedule!r}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (self.eval_batches is None or self.eval_batches >= 1, "eval_batches must be >= 1"),
            (self.eval_train_batches >= 0, "eval_train_batches must be >= 0"),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.save_every is None or self.save_every >= 1, f"save_every must be >= 1, got {self.save_every}"),
            (self.keep_last >= 1, f"keep_last must be >= 1, got {self.keep_last}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.sample_tokens >= 0, f"sample_tokens must be >= 0, got {self.sample_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown training settings: {', '.join(sorted(unknown))}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to cfg.lr, then cosine decay to the floor."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    floor = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    span = max(1, total_steps - cfg.warmup_steps - 1)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def load_options_file(path: str | Path) -> dict:
    """The settings of a YAML or JSON config file (keys are flag names; dashes or underscores), as a dict."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # yaml.YAMLError, json.JSONDecodeError
        raise UserError(f"cannot parse config file {path}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of flag names to values")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}
