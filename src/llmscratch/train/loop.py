"""The one training loop: pretraining, classification and instruction fine-tuning all run through `train`.

A task (train/tasks/) supplies the data, the loss and evaluation metrics; this loop supplies AdamW with
decoupled weight decay on matrices only, linear warmup then cosine decay, gradient accumulation and clipping,
bf16 autocast on CUDA, optional torch.compile, DistributedDataParallel, periodic evaluation (validation loss,
perplexity, task metrics, a sample generation), early stopping, atomic checkpoints with exact resume,
metrics.jsonl, a loss plot, a progress bar and optional TensorBoard.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmscratch.train import checkpoint as ckpt
from llmscratch.train import distributed as dist_
from llmscratch.train.config import TrainConfig, lr_at
from llmscratch.train.plots import plot_metrics, read_metrics
from llmscratch.train.tasks import Task, move_to
from llmscratch.utils import UserError, atomic_folder, atomic_write_text

KILL_ENV = "LLMSCRATCH_KILL_AFTER_STEP"  # tests: the process SIGKILLs itself after this step (and its checkpoint)


@dataclass
class TrainResult:
    """What a run produced: where its files are and its final figures."""

    out_dir: Path
    steps: int
    tokens_seen: int
    last_train_loss: float | None
    best_val_loss: float | None
    best_step: int | None
    stopped_early: bool  # by early stopping (patience)
    evals: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    final_model: Path | None = None
    best_model: Path | None = None
    plot: Path | None = None
    metrics_path: Path | None = None
    resumed_from: Path | None = None
    seconds: float = 0.0
    stop_reason: str | None = None  # "early stopping", "time limit", or None (all steps done)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) generators."""
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on matrices (dim >= 2) only; fused when available."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise UserError("the model has no trainable parameters (every parameter has requires_grad=False)")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if device.type in ("cuda", "cpu", "mps"):
        try:
            return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def _autocast(device: torch.device, cfg: TrainConfig):
    if device.type == "cuda" and cfg.amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batch_rows(batch) -> int:
    """Number of examples in a batch (its first tensor's first dimension)."""
    from llmscratch.train.tasks import _first_tensor

    t = _first_tensor(batch)
    return int(t.shape[0]) if t.dim() else 1


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    info: dist_.DistInfo,
    max_batches: int | None = None,
    train_batches: bool = False,
) -> dict:
    """Mean loss (weighted by examples) and task metrics over the validation set (or the first train batches),
    summed over all ranks. {"loss": float | None, "<metric>": float, ...}."""
    was_training = model.training
    model.eval()
    if train_batches:
        batches = task.train_batches(0, cfg.batch_size, 0, info.rank, info.world_size)
    else:
        batches = task.val_batches(cfg.batch_size, info.rank, info.world_size)
    sums: dict[str, list[float]] = {"loss": [0.0, 0.0]}
    with _autocast(info.device, cfg):
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            batch = move_to(batch, info.device)
            n = _batch_rows(batch)
            loss, metrics = (task.loss(model, batch), {}) if train_batches else task.evaluate_batch(model, batch)
            sums["loss"][0] += float(loss) * n
            sums["loss"][1] += n
            for k, (s, c) in metrics.items():
                acc = sums.setdefault(k, [0.0, 0.0])
                acc[0] += float(s)
                acc[1] += float(c)
    if info.enabled:
        merged: dict[str, list[float]] = {}
        for part in dist_.all_gather_objects(sums):
            for k, (s, c) in part.items():
                acc = merged.setdefault(k, [0.0, 0.0])
                acc[0] += s
                acc[1] += c
        sums = merged
    model.train(was_training)
    return {k: (s / c if c else None) for k, (s, c) in sums.items()}


def sample_text(model: nn.Module, tokenizer, cfg: TrainConfig) -> str | None:
    """Greedy continuation of cfg.sample_prompt (through the one generation loop), or None if it cannot run."""
    from llmscratch.generate import SamplingConfig, generate_text

    if not cfg.sample_prompt or tokenizer is None or cfg.sample_tokens == 0:
        return None
    prompt_len = len(tokenizer.encode(cfg.sample_prompt, allowed_special="all"))
    room = model.config.context_length - prompt_len
    if room <= 0:
        return None
    # generate_text stops at the tokenizer's end of text, and generates in eval mode (restoring the mode after)
    scfg = SamplingConfig(max_new_tokens=min(cfg.sample_tokens, room), temperature=0.0)
    return generate_text(model, tokenizer, cfg.sample_prompt, scfg)[0]


def _optimizer_step(task, batches, model, train_model, ddp_model, optimizer, cfg: TrainConfig, info):
    """Accumulate cfg.grad_accum micro-batches, clip, step: (mean loss over ranks, tokens here, grad norm)."""
    loss_sum = torch.zeros((), device=info.device)
    tokens = 0
    for micro in range(cfg.grad_accum):
        batch = move_to(next(batches), info.device)
        sync = micro == cfg.grad_accum - 1 or not info.enabled  # DDP: all-reduce gradients on the last one only
        with (contextlib.nullcontext() if sync else ddp_model.no_sync()), _autocast(info.device, cfg):
            loss = task.loss(train_model, batch) / cfg.grad_accum
        loss.backward()
        loss_sum += loss.detach()
        tokens += task.batch_tokens(batch)
    grad_norm = None
    if cfg.grad_clip:
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_loss = float(loss_sum)
    if info.enabled:
        step_loss = dist_.all_reduce_sum([step_loss], info.device)[0] / info.world_size
    return step_loss, tokens, grad_norm


class _Logger:
    """metrics.jsonl (append), optional TensorBoard; rank 0 only."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, enabled: bool, echo):
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.tb = None
        if enabled and cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
            except ImportError:
                echo("TensorBoard logging asked for, but the tensorboard package is not installed "
                     "(pip install tensorboard); continuing with metrics.jsonl only")

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            prefix = record["type"]
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "type", "epoch", "time"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, record["step"])

    def truncate_after(self, step: int) -> None:
        """Drop records past `step` (from a run that was interrupted after its last checkpoint)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _prepare_out_dir(out: Path, resume: bool, overwrite: bool, info: dist_.DistInfo) -> None:
    ckpt_root = out / "checkpoints"
    existing = ckpt.list_checkpoints(ckpt_root)
    if existing and not resume and not overwrite:
        raise UserError(f"{out} already holds checkpoints ({existing[-1].name}); pass --resume to continue that run, "
                        "--overwrite to start again there, or choose another --out")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in ("checkpoints", "final", "best", "tensorboard"):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in ("metrics.jsonl", "loss.png"):
                (out / name).unlink(missing_ok=True)
    dist_.barrier()


def _resume(
    out: Path, model: nn.Module, optimizer, cfg: TrainConfig, info: dist_.DistInfo, echo
) -> tuple[ckpt.TrainState, Path | None]:
    """Load the newest good checkpoint of `out` (the same one on every rank) and restore the RNGs."""
    found, problems = (ckpt.find_resumable(out / "checkpoints") if info.is_main else (None, []))
    for p in problems:
        echo(f"warning: skipping damaged checkpoint: {p}")
    found = dist_.broadcast_object(str(found) if found else None)
    if found is None:
        echo(f"no checkpoint to resume from in {out / 'checkpoints'}; starting from scratch")
        return ckpt.TrainState(world_size=info.world_size), None
    path = Path(found)
    try:
        # rank 0's find_resumable has just verified the checkpoint; the other ranks verify it here
        state, rng_states, saved = ckpt.load_checkpoint(path, model, optimizer, verified=info.is_main)
    except ckpt.CheckpointError as e:
        raise UserError(f"cannot resume from {path}: {e}") from None
    for key in ("batch_size", "grad_accum", "seed", "lr", "schedule", "warmup_steps", "weight_decay"):
        if saved.get(key) != getattr(cfg, key):
            echo(f"warning: {key} was {saved.get(key)!r} in the checkpoint and is {getattr(cfg, key)!r} now; "
                 "the continuation will differ from the original run")
    if state.world_size != info.world_size:
        echo(f"warning: the checkpoint was written by {state.world_size} processes, now {info.world_size}: "
             "the data order of the current epoch changes")
    if info.rank < len(rng_states):
        ckpt.restore_rng(rng_states[info.rank])
    else:
        seed_everything(cfg.seed + info.rank + 1_000_003 * state.step)
    state.world_size = info.world_size
    echo(f"resumed from {path} (step {state.step}, epoch {state.epoch + 1}, batch {state.batch})")
    return state, path


def _model_config_dict(model: nn.Module) -> dict | None:
    from llmscratch.model import config_to_dict

    config = getattr(model, "config", None)
    try:
        return config_to_dict(config) if config is not None else None
    except TypeError:
        return None


def train(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    *,
    tokenizer=None,
    tokenizer_ref: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    dist_info: dist_.DistInfo | None = None,
) -> TrainResult:
    """Train `model` on `task` as `cfg` says; write checkpoints, metrics.jsonl, loss.png and final/ to cfg.out_dir.

    - tokenizer: used for the sample generation at each evaluation (tasks with `produces_text`) and saved
      with checkpoints; tokenizer_ref (e.g. "gpt2") is stored instead of a file when given.
    - resume: continue from the newest good checkpoint in cfg.out_dir (exactly: same data order, RNG, optimizer).
    - overwrite: allowed to replace an earlier run's files in cfg.out_dir when not resuming.
    - dist_info: from `distributed.setup()` (default: set up from the environment; one process without torchrun).
    Trainable parameters are those with requires_grad (freeze or add LoRA before calling).
    """
    cfg.validate()
    info = dist_info or dist_.setup(cfg.device)
    main = info.is_main
    from tqdm.auto import tqdm

    def echo(msg: str) -> None:
        if main:
            tqdm.write(msg)

    n_batches = task.num_train_batches(cfg.batch_size, info.world_size)
    steps_per_epoch = n_batches // cfg.grad_accum
    if steps_per_epoch == 0:
        raise UserError(
            f"not enough training data for one optimizer step: {n_batches} batch(es) of {cfg.batch_size} per "
            f"process, {cfg.grad_accum} needed per step; use a smaller batch size, context or grad-accum, or more data"
        )
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    out = Path(cfg.out_dir)
    _prepare_out_dir(out, resume, overwrite, info)
    started = time.perf_counter()
    device = info.device
    model.to(device)
    model.train()
    optimizer = build_optimizer(model, cfg, device)
    seed_everything(cfg.seed + info.rank)
    state, resumed_from = ckpt.TrainState(world_size=info.world_size), None
    if resume:
        state, resumed_from = _resume(out, model, optimizer, cfg, info, echo)
    logger = _Logger(out, cfg, main, echo)
    if resumed_from is not None:
        logger.truncate_after(state.step)
    if main:
        cfg.save(out / "train_config.json")

    ddp_model = dist_.wrap(model, info)
    train_model = torch.compile(ddp_model) if cfg.compile else ddp_model
    eval_model = torch.compile(model) if cfg.compile else model

    save_every = cfg.save_every or cfg.eval_every or total
    ckpt_root = out / "checkpoints"
    model_config = _model_config_dict(model)
    sample_on_eval = bool(getattr(task, "produces_text", False)) and tokenizer is not None
    kill_after = int(os.environ[KILL_ENV]) if os.environ.get(KILL_ENV) else None
    echo(f"training {task.name}: {model.num_params(trainable_only=True) if hasattr(model, 'num_params') else '?'} "
         f"trainable parameters, {total} steps ({steps_per_epoch} per epoch, {info.world_size} process(es), "
         f"global batch {cfg.batch_size * cfg.grad_accum * info.world_size}) on {device}; outputs in {out}")

    evals = [r for r in read_metrics(logger.path) if r.get("type") == "eval"] if resumed_from and main else []
    stopped_early = False
    stop_reason: str | None = None
    last_loss: float | None = None
    last_ckpt: Path | None = resumed_from
    tok_rate = None
    bar = tqdm(total=total, initial=state.step, disable=not (main and cfg.progress), unit="step",
               dynamic_ncols=True, desc=task.name)

    def save(step_state: ckpt.TrainState) -> Path | None:
        rng_states = dist_.all_gather_objects(ckpt.capture_rng())
        path = None
        if main:
            path = ckpt.save_checkpoint(ckpt_root, model, optimizer, step_state, rng_states, cfg.to_dict(),
                                        model_config, tokenizer, tokenizer_ref, cfg.keep_last)
        dist_.barrier()
        return path

    while state.step < total and stop_reason is None:
        batches = iter(task.train_batches(state.epoch, cfg.batch_size, state.batch, info.rank, info.world_size))
        for _ in range(steps_per_epoch - state.batch // cfg.grad_accum):
            if state.step >= total:
                break
            t0 = time.perf_counter()
            lr = lr_at(state.step, total, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            step_loss, tokens, grad_norm = _optimizer_step(
                task, batches, model, train_model, ddp_model, optimizer, cfg, info)
            if not math.isfinite(step_loss):
                raise UserError(f"the training loss became {step_loss} at step {state.step + 1}; "
                                "lower the learning rate or check the data")
            state.step += 1
            state.batch += cfg.grad_accum
            state.tokens_seen += tokens * info.world_size
            if state.batch >= steps_per_epoch * cfg.grad_accum:
                state.epoch, state.batch = state.epoch + 1, 0
            last_loss = step_loss
            state.recent_losses.append(step_loss)
            dt = max(time.perf_counter() - t0, 1e-9)
            rate = tokens * info.world_size / dt
            tok_rate = rate if tok_rate is None else 0.8 * tok_rate + 0.2 * rate
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_rate:,.0f}", refresh=False)
            if state.step % cfg.log_every == 0 or state.step == total:
                rec = {"type": "train", "step": state.step, "epoch": state.epoch + (state.batch > 0),
                       "tokens": state.tokens_seen, "loss": step_loss, "lr": lr, "tok_per_s": rate}
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                logger.log(rec)

            out_of_time = bool(cfg.max_seconds) and time.perf_counter() - started >= cfg.max_seconds
            if info.enabled and cfg.max_seconds:  # every rank stops at the same step
                out_of_time = dist_.all_reduce_sum([float(out_of_time)], device)[0] > 0
            if out_of_time and state.step < total:
                echo(f"time limit of {cfg.max_seconds:g} s reached after step {state.step} of {total}")
                stop_reason = "time limit"
            last = state.step == total or out_of_time
            eval_now = last or state.step == 1 or (cfg.eval_every and state.step % cfg.eval_every == 0)
            new_best = False
            if eval_now:
                res = evaluate(eval_model, task, cfg, info, cfg.eval_batches)
                val = res.pop("loss")
                rec = {"type": "eval", "step": state.step, "epoch": state.epoch + (state.batch > 0),
                       "tokens": state.tokens_seen, "lr": lr,
                       "train_loss": sum(state.recent_losses) / len(state.recent_losses), "val_loss": val,
                       "val_ppl": math.exp(min(val, 700.0)) if val is not None and task.produces_text else None, **res}
                state.recent_losses = []
                if cfg.eval_train_batches:
                    rec["eval_train_loss"] = evaluate(eval_model, task, cfg, info, cfg.eval_train_batches,
                                                      train_batches=True)["loss"]
                if val is not None:
                    if state.best_val_loss is None or val < state.best_val_loss:
                        state.best_val_loss, state.best_step, state.bad_evals = val, state.step, 0
                        new_best = True
                    else:
                        state.bad_evals += 1
                if main and sample_on_eval and (text := sample_text(model, tokenizer, cfg)) is not None:
                    rec["sample"] = text
                logger.log(rec)
                evals.append(rec)
                echo(_eval_line(rec, total))
                if cfg.patience and state.bad_evals >= cfg.patience and not last:
                    echo(f"early stopping: validation loss did not improve for {cfg.patience} evaluations "
                         f"(best {state.best_val_loss:.4f} at step {state.best_step})")
                    stopped_early, stop_reason = True, "early stopping"
            if main and new_best and cfg.export_models:
                export_model(model, out / "best", tokenizer, tokenizer_ref,
                             info={"step": state.step, "val_loss": state.best_val_loss})
            if last or stopped_early or state.step % save_every == 0:
                last_ckpt = save(state)
            if kill_after is not None and state.step == kill_after:
                bar.close()
                os.kill(os.getpid(), signal.SIGKILL)
            if stopped_early or last:
                break
    bar.close()

    final_model = plot = None
    if main:
        if cfg.export_models:
            final_model = export_model(model, out / "final", tokenizer, tokenizer_ref,
                                       info={"step": state.step, "val_loss": evals[-1]["val_loss"] if evals else None})
        plot = plot_metrics(read_metrics(logger.path), out / "loss.png", title=f"{task.name}: {out}")
    logger.close()
    dist_.barrier()
    return TrainResult(
        out_dir=out, steps=state.step, tokens_seen=state.tokens_seen, last_train_loss=last_loss,
        best_val_loss=state.best_val_loss, best_step=state.best_step, stopped_early=stopped_early, evals=evals,
        checkpoint=last_ckpt, final_model=final_model, plot=plot,
        best_model=out / "best" if main and cfg.export_models and state.best_step is not None else None,
        metrics_path=logger.path if main else None,
        resumed_from=resumed_from, seconds=time.perf_counter() - started, stop_reason=stop_reason,
    )


def export_model(
    model: nn.Module, folder: Path, tokenizer=None, tokenizer_ref: str | None = None, info: dict | None = None
) -> Path:
    """A model folder loadable by `llmscratch.weights.load_model` (weights/ours.py layout: model.safetensors,
    config.json, tokenizer), plus training.json holding `info` (e.g. the step and validation loss)."""
    from llmscratch.weights.ours import save_pretrained

    if _model_config_dict(model) is not None:
        save_pretrained(model, tokenizer_ref if tokenizer_ref is not None else tokenizer, folder)
    else:  # not one of our language models: its weights only
        with atomic_folder(folder) as tmp:
            ckpt.save_model_weights(model, tmp / "model.safetensors")
    if info is not None:
        atomic_write_text(folder / "training.json", json.dumps(info, indent=2) + "\n")
    return folder


def _eval_line(rec: dict, total: int) -> str:
    parts = [f"step {rec['step']}/{total}", f"train {rec['train_loss']:.3f}"]
    if rec.get("eval_train_loss") is not None:
        parts[-1] += f" (eval {rec['eval_train_loss']:.3f})"
    if rec.get("val_loss") is not None:
        ppl = f" (ppl {rec['val_ppl']:.1f})" if rec.get("val_ppl") is not None else ""  # next-token tasks only
        parts.append(f"val {rec['val_loss']:.3f}{ppl}")
    skip = {"type", "step", "epoch", "tokens", "lr", "train_loss", "val_loss", "val_ppl", "sample", "eval_train_loss"}
    parts += [f"{k} {v:.4f}" for k, v in rec.items() if k not in skip and isinstance(v, float)]
    line = " | ".join(parts)
    if rec.get("sample") is not None:
        line += "\n    sample: " + repr(rec["sample"])[:200]
    return line
