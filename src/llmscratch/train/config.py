"""The training settings (TrainConfig), their JSON form and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from llmscratch.config import check_fields, setting
from llmscratch.utils import UserError, atomic_write_text


@dataclass
class TrainConfig:
    """How to train: optimisation, schedule, evaluation, checkpoints and logging. Saved as JSON beside checkpoints.

    Each field's help text, flag and allowed range are in its metadata (llmscratch.config): recipes expose the
    fields they need as flags of their command.
    """

    out_dir: str = setting("runs/train", "output folder: checkpoints/, final/ and best/ models, metrics.jsonl, "
                           "loss.png", flag="--out")
    epochs: int = setting(1, "passes over the training data", ge=1)
    max_steps: int | None = setting(None, "stop after this many optimizer steps", ge=1)
    max_seconds: float | None = setting(None, "stop (evaluate and save) once training has run this many seconds",
                                        gt=0)
    batch_size: int = setting(8, "examples per micro-batch per process", ge=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", ge=1)
    lr: float = setting(4e-4, "peak learning rate", gt=0)
    min_lr: float | None = setting(None, "floor of the cosine decay (default: lr / 10)", ge=0)
    schedule: str = setting("cosine", "cosine (warmup then cosine decay to min_lr) or constant (warmup then lr)",
                            choices=("cosine", "constant"))
    warmup_steps: int = setting(0, "linear warmup steps", ge=0)
    weight_decay: float = setting(0.1, "AdamW weight decay (matrices only)", ge=0)
    betas: tuple[float, float] = setting((0.9, 0.999), "AdamW betas", ge=0, lt=1, cli=False)
    grad_clip: float | None = setting(1.0, "clip the global gradient norm to this (0: no clipping)", ge=0)
    eval_every: int = setting(50, "optimizer steps between evaluations (0: only at the first and last step)", ge=0)
    eval_batches: int | None = setting(None, "validation batches per evaluation (default: all)", ge=1)
    eval_train_batches: int = setting(0, "also measure the train loss in eval mode on this many train batches", ge=0)
    patience: int | None = setting(None, "early stopping: evaluations without a better validation loss", ge=1)
    save_every: int | None = setting(None, "optimizer steps between checkpoints (default: at each evaluation)", ge=1)
    keep_last: int = setting(3, "newest checkpoints to keep (the best model is kept apart, in OUT/best)", ge=1)
    export_models: bool = setting(True, "write OUT/final and OUT/best (best validation loss) as model folders",
                                  cli=False)
    seed: int = setting(123, "random seed (initialisation, data order, dropout)", ge=0)
    device: str = setting("auto", "cpu, cuda, mps or auto")
    amp: bool = setting(True, "bf16 autocast on CUDA (ignored elsewhere)", cli=False)
    compile: bool = setting(False, "torch.compile the model")
    sample_prompt: str | None = setting("Every effort moves you", "prompt continued at each evaluation")
    sample_tokens: int = setting(30, "tokens generated for the sample (0: none)", ge=0)
    log_every: int = setting(1, "optimizer steps between train records in metrics.jsonl", ge=1, cli=False)
    tensorboard: bool = setting(False, "also log to OUT/tensorboard (needs the tensorboard package)")
    progress: bool = setting(True, "no progress bar", switches={"--no-progress": False})
    extra: dict = field(default_factory=dict)  # free-form run description (data, model preset...) saved with it

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise UserError for settings that cannot work, before any work starts."""
        check_fields(self)
        if self.min_lr is not None and self.min_lr > self.lr:
            raise UserError(f"min_lr must be <= lr ({self.lr:g}), got {self.min_lr:g}", params=("min_lr", "lr"))

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
