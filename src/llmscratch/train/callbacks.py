"""What varies between runs, as Trainer callbacks: progress bar, metrics log and plot, time limit, early stopping,
sample text, best/final model export.

A callback overrides the hooks it needs; `Trainer.default_callbacks` picks these from the TrainConfig, and a
caller adds its own with `Trainer(..., callbacks=[...])` (tests inject a crash this way). A callback may end the
run with `trainer.stop(reason)`: the Trainer then evaluates, saves a checkpoint and finishes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

from llmscratch.train.plots import plot_metrics, read_metrics
from llmscratch.utils import atomic_write_text

if TYPE_CHECKING:
    from llmscratch.train.trainer import Trainer


class Callback:
    """Hooks called by `Trainer.fit`, in this order; each does nothing unless overridden."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """After the output folder, optimizer and resumed state are ready, before the first step."""

    def on_train_step(self, trainer: Trainer, record: dict) -> None:
        """After each optimizer step; `record` is its metrics.jsonl train record."""

    def on_evaluate(self, trainer: Trainer, record: dict) -> None:
        """After each evaluation; `record` is its eval record (a callback may add entries, e.g. a sample)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """At the very end of a step, after its evaluation and checkpoint (if any)."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last step, when the run ended normally (all steps, time limit or early stopping)."""

    def close(self) -> None:
        """Release what the callback holds (called after every run, also one that failed)."""


class ProgressBar(Callback):
    """A tqdm bar over optimizer steps with the loss, learning rate and smoothed tokens/s (rank 0)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.tok_rate: float | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.total, initial=trainer.state.step, unit="step", dynamic_ncols=True,
                        disable=not (self.enabled and trainer.info.is_main), desc=trainer.task.name)

    def on_train_step(self, trainer: Trainer, record: dict) -> None:
        rate = record["tok_per_s"]
        self.tok_rate = rate if self.tok_rate is None else 0.8 * self.tok_rate + 0.2 * rate
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{self.tok_rate:,.0f}",
                             refresh=False)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog(Callback):
    """metrics.jsonl (train records every `log_every` steps, every eval record), the eval line on the console,
    optional TensorBoard, and loss.png at the end. Rank 0 writes; every rank keeps the eval records."""

    def __init__(self, log_every: int = 1, tensorboard: bool = False):
        self.log_every, self.tensorboard = log_every, tensorboard
        self.path: Path | None = None
        self.plot: Path | None = None
        self.tb = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.path = trainer.out / "metrics.jsonl"
        self.enabled = trainer.info.is_main
        if trainer.resumed_from is not None and self.enabled:
            self._truncate_after(trainer.state.step)  # drop records of steps done after the checkpoint
            trainer.evals[:0] = [r for r in read_metrics(self.path) if r.get("type") == "eval"]
        if self.enabled and self.tensorboard:
            self._open_tensorboard(trainer)

    def on_train_step(self, trainer: Trainer, record: dict) -> None:
        if record["step"] % self.log_every == 0 or record["step"] == trainer.total:
            self._write(record)

    def on_evaluate(self, trainer: Trainer, record: dict) -> None:
        self._write(record)
        trainer.echo(eval_line(record, trainer.total))

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.enabled:
            self.plot = plot_metrics(read_metrics(self.path), trainer.out / "loss.png",
                                     title=f"{trainer.task.name}: {trainer.out}")
        self.close()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def _open_tensorboard(self, trainer: Trainer) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            trainer.echo("TensorBoard logging asked for, but the tensorboard package is not installed "
                         "(pip install tensorboard); continuing with metrics.jsonl only")
            return
        self.tb = SummaryWriter(log_dir=str(trainer.out / "tensorboard"))

    def _write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "type", "epoch", "time"):
                    self.tb.add_scalar(f"{record['type']}/{k}", v, record["step"])

    def _truncate_after(self, step: int) -> None:
        if self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))


class TimeLimit(Callback):
    """Stop (evaluate, save) once training has run `seconds`; every process stops at the same step."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_step(self, trainer: Trainer, record: dict) -> None:
        out_of_time = time.perf_counter() - trainer.started >= self.seconds
        if trainer.info.enabled:
            from llmscratch.train import distributed as dist_  # torch: imported only once training runs

            out_of_time = dist_.all_reduce_sum([float(out_of_time)], trainer.info.device)[0] > 0
        if out_of_time and trainer.state.step < trainer.total:
            trainer.echo(f"time limit of {self.seconds:g} s reached after step {trainer.state.step} of {trainer.total}")
            trainer.stop("time limit")


class EarlyStopping(Callback):
    """Stop when the validation loss has not improved for `patience` evaluations (not counted at the last step)."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, trainer: Trainer, record: dict) -> None:
        s = trainer.state
        if s.bad_evals >= self.patience and trainer.stop_reason is None and s.step < trainer.total:
            trainer.echo(f"early stopping: validation loss did not improve for {self.patience} evaluations "
                         f"(best {s.best_val_loss:.4f} at step {s.best_step})")
            trainer.stop("early stopping")


class SampleText(Callback):
    """Add a greedy continuation of `prompt` to each eval record (text-producing tasks, rank 0)."""

    def __init__(self, prompt: str, tokens: int):
        self.prompt, self.tokens = prompt, tokens

    def on_evaluate(self, trainer: Trainer, record: dict) -> None:
        if trainer.info.is_main:
            text = sample_text(trainer.model, trainer.tokenizer, self.prompt, self.tokens)
            if text is not None:
                record["sample"] = text


class TrainMetrics(Callback):
    """Add the task's loss and metrics over the first `batches` training batches (eval mode, all ranks) to each
    eval record: `eval_train_loss` and `train_<metric>`. Place it before MetricsLog so that they are logged."""

    def __init__(self, batches: int):
        self.batches = batches

    def on_evaluate(self, trainer: Trainer, record: dict) -> None:
        cfg, info = trainer.cfg, trainer.info
        res = trainer.mean_over(trainer.task.train_batches(0, cfg.batch_size, 0, info.rank, info.world_size),
                                self.batches)
        record["eval_train_loss"] = res.pop("loss")
        record.update({f"train_{k}": v for k, v in res.items()})


class ExportModels(Callback):
    """OUT/best (at each new best validation loss) and OUT/final (at the end) as model folders (rank 0)."""

    def on_evaluate(self, trainer: Trainer, record: dict) -> None:
        if trainer.improved and trainer.info.is_main:
            trainer.export("best", {"step": trainer.state.step, "val_loss": trainer.state.best_val_loss})

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.info.is_main:
            last = trainer.evals[-1]["val_loss"] if trainer.evals else None
            trainer.final_model = trainer.export("final", {"step": trainer.state.step, "val_loss": last})


def sample_text(model, tokenizer, prompt: str, max_tokens: int) -> str | None:
    """Greedy continuation of `prompt` (through the one generation loop), or None if it cannot run."""
    from llmscratch.generate import SamplingConfig, generate_text
    from llmscratch.tokenizer import encode_prompt

    if not prompt or tokenizer is None or max_tokens == 0:
        return None
    room = model.config.context_length - len(encode_prompt(tokenizer, prompt))  # as generate_text encodes it
    if room <= 0:
        return None
    # generate_text stops at the tokenizer's end of text, and generates in eval mode (restoring the mode after)
    return generate_text(model, tokenizer, prompt, SamplingConfig(max_new_tokens=min(max_tokens, room),
                                                                  temperature=0.0))[0]


def eval_line(rec: dict, total: int) -> str:
    """One console line for an eval record (and the sample on the next)."""
    parts = [f"step {rec['step']}/{total}", f"train {rec['train_loss']:.3f}"]
    if rec.get("eval_train_loss") is not None:
        parts[-1] += f" (eval {rec['eval_train_loss']:.3f})"
    if rec.get("val_loss") is not None:
        ppl = f" (ppl {rec['val_ppl']:.1f})" if rec.get("val_ppl") is not None else ""  # next-token tasks only
        parts.append(f"val {rec['val_loss']:.3f}{ppl}")
    skip = {"type", "step", "epoch", "tokens", "lr", "train_loss", "val_loss", "val_ppl", "sample", "eval_train_loss"}
    parts += [f"{k} {v:.4f}" for k, v in rec.items() if k not in skip and isinstance(v, float) and math.isfinite(v)]
    line = " | ".join(parts)
    if rec.get("sample") is not None:
        line += "\n    sample: " + repr(rec["sample"])[:200]
    return line
