"""The one Trainer: pretraining, classification and instruction fine-tuning all run through `Trainer.fit`.

A task (train/tasks/) supplies the data, the loss and evaluation metrics; the Trainer supplies AdamW with
decoupled weight decay on matrices only, linear warmup then cosine decay, gradient accumulation and clipping,
bf16 autocast on CUDA, optional torch.compile, DistributedDataParallel, periodic evaluation and atomic
checkpoints with exact resume. What varies between runs (progress bar, metrics log and plot, time limit, early
stopping, sample text, best/final model export) are callbacks (train/callbacks.py).

    trainer = Trainer(model, task, cfg, tokenizer=tok)
    result = trainer.fit()          # = train(model, task, cfg, tokenizer=tok)

`fit` repeats: `step` (one optimizer step), `evaluate` (every cfg.eval_every steps, the first and the last),
`save` (a checkpoint every cfg.save_every steps and at the end). A non-finite loss or model stops the run with a
UserError naming the step; nothing non-finite is ever saved, so the newest checkpoint stays the last good one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from llmscratch.train import checkpoint as ckpt
from llmscratch.train import distributed as dist_
from llmscratch.train.callbacks import (
    Callback,
    EarlyStopping,
    ExportModels,
    MetricsLog,
    ProgressBar,
    SampleText,
    TimeLimit,
)
from llmscratch.train.config import TrainConfig, lr_at
from llmscratch.train.evaluate import means, merge_sums, task_sums
from llmscratch.train.tasks import Task, move_to
from llmscratch.utils import (
    FolderInUse,
    UserError,
    atomic_folder,
    atomic_write_text,
    check_folder_can_be_made,
    folder_problem,
    json_object,
    plural,
)


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
    resumed_at: int = 0  # the step the run resumed from (0: it started here)
    seconds: float = 0.0
    stop_reason: str | None = None  # "early stopping", "time limit", or None (all steps done)


RUN_FOLDERS = ("checkpoints", "final", "best", "tensorboard")  # a run's own: a new run (not resumed) deletes them
RUN_FILES = ("metrics.jsonl", "loss.png")


def check_run_folder(out: str | Path, resume: bool = False, overwrite: bool = False, outputs: tuple[str, ...] = ()
                     ) -> None:
    """Refuse, before any work, a run folder `out` that a new run (not `resume`) would damage without
    `overwrite`: a file in the way, checkpoints or a trained model (final/, best/) of an earlier run, or files by the
    names a run writes (its own, and the recipe's `outputs`: report.json...) that are not from one of our runs.
    The Trainer checks its own when it starts; recipes call this first with theirs, before they load or write
    anything."""
    out = Path(out)
    check_folder_can_be_made(out)
    if resume or overwrite:
        return
    existing = ckpt.list_checkpoints(out / "checkpoints")
    if existing:
        raise UserError(f"{out} already holds checkpoints ({existing[-1].name}); resume=True continues that run, "
                        "overwrite=True starts again there, or choose another output folder",
                        params=("resume", "overwrite"))
    models = [n for n in ("final", "best") if (out / n).exists()]
    if models:
        raise UserError(f"{out} already holds a trained model ({models[0]}/) from an earlier run; overwrite=True "
                        "starts again there (and deletes it), or choose another output folder", params=("overwrite",))
    config = out / "train_config.json"
    ours_beside = _is_train_config(config)
    if (config.exists() or config.is_symlink()) and not ours_beside:
        raise FolderInUse(config, "is not from one of our runs")
    for name in (*RUN_FOLDERS, *RUN_FILES, *outputs):
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if name in ("final", "best"):
            reason = folder_problem(path)
        else:
            reason = None if ours_beside and not path.is_symlink() else "is not from one of our runs"
        if reason is not None:
            raise FolderInUse(path, reason)


def _is_train_config(path: Path) -> bool:
    """Whether `path` is a train_config.json one of our runs wrote (a regular file holding a TrainConfig)."""
    return {"lr", "batch_size", "seed"} <= set(json_object(path) or {})


class Trainer:
    """Train `model` on `task` as `cfg` says; checkpoints, metrics.jsonl, loss.png and final/ go to cfg.out_dir.

    - tokenizer: for the sample text at each evaluation (tasks with `produces_text`), saved with checkpoints;
      tokenizer_ref (e.g. "gpt2") is stored instead of a file when given.
    - resume: continue from the newest good checkpoint in cfg.out_dir (exactly: data order, RNG, optimizer).
    - overwrite: allowed to replace an earlier run's files in cfg.out_dir when not resuming.
    - dist_info: from `distributed.setup()` (default: from the environment; one process without torchrun).
    - callbacks: added after `default_callbacks()`.
    Trainable parameters are those with requires_grad (freeze or add LoRA before).
    """

    def __init__(self, model: nn.Module, task: Task, cfg: TrainConfig, *, tokenizer=None,
                 tokenizer_ref: str | None = None, resume: bool = False, overwrite: bool = False,
                 dist_info: dist_.DistInfo | None = None, callbacks: list[Callback] | None = None):
        cfg.validate()
        if resume and overwrite:
            raise UserError("resume=True continues the run in the folder and overwrite=True starts a new one there: "
                            "give one of them", params=("resume", "overwrite"))
        self.model, self.task, self.cfg = model, task, cfg
        self.tokenizer, self.tokenizer_ref = tokenizer, tokenizer_ref
        self.resume, self.overwrite = resume, overwrite
        self.info = dist_info or dist_.setup(cfg.device)
        self.out = Path(cfg.out_dir)
        self.steps_per_epoch, self.total = plan_steps(task, cfg, self.info.world_size)
        self.state = ckpt.TrainState(world_size=self.info.world_size)
        self.callbacks = self.default_callbacks() + list(callbacks or [])
        self.evals: list[dict] = []
        self.stop_reason: str | None = None
        self.signalled: int | None = None  # SIGINT or SIGTERM arrived while training: passed on at the end
        self.improved = False  # the last evaluation gave a new best validation loss
        self.last_loss: float | None = None
        self.resumed_from: Path | None = None
        self.resumed_at = 0
        self.last_checkpoint: Path | None = None
        self.final_model: Path | None = None
        self.started = time.perf_counter()

    def default_callbacks(self) -> list[Callback]:
        """The callbacks cfg asks for, in the order their hooks run."""
        cfg = self.cfg
        callbacks: list[Callback] = [ProgressBar(cfg.progress)]
        if getattr(self.task, "produces_text", False) and self.tokenizer is not None and cfg.sample_prompt:
            callbacks.append(SampleText(cfg.sample_prompt, cfg.sample_tokens))
        callbacks.append(MetricsLog(cfg.log_every, cfg.tensorboard))
        if cfg.max_seconds:
            callbacks.append(TimeLimit(cfg.max_seconds))
        if cfg.patience:
            callbacks.append(EarlyStopping(cfg.patience))
        if cfg.export_models:
            callbacks.append(ExportModels())
        return callbacks

    # ------------------------------------------------------------------------------------------- the run

    def fit(self) -> TrainResult:
        """Run to cfg's end (steps, epochs, time limit or early stopping); the run's outputs and figures."""
        try:
            self._start()
            with self._signals_stop_after_a_checkpoint():
                while self.state.step < self.total and self.stop_reason is None:
                    self._epoch()
            if self.stop_reason == "interrupted":  # saved: not a finished run, so no final model
                self.echo(f"checkpoint of step {self.state.step} saved in {self.out / 'checkpoints'}: the same "
                          "command with --resume continues from it")
            else:  # finished, or stopped for another reason (a time limit) in the step the signal came
                self._emit("on_fit_end")
        finally:
            for cb in self.callbacks:
                cb.close()
        if self.signalled is not None:
            signal.raise_signal(self.signalled)  # as if it came now, to the handler there was before
            raise KeyboardInterrupt  # that handler returned (it ignores the signal): the run still stops here
        dist_.barrier()
        return self._result()

    @contextlib.contextmanager
    def _signals_stop_after_a_checkpoint(self):
        """While training: a first Ctrl-C (SIGINT) or SIGTERM (`timeout`, job schedulers, `docker stop`) ends the
        run after the current step, evaluated and saved; `fit` then raises that signal again for the caller (the
        CLI: "interrupted" or "terminated"). A second one stops at once. One process only (DDP ranks would disagree
        on the step), on the main thread (where Python delivers signals); a signal ignored, or handled outside
        Python, is left alone."""
        previous: dict[int, object] = {}
        if self.info.enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def first(signum, frame):  # only flags: printing here could re-enter a write the signal interrupted
            for sig, handler in previous.items():  # a second signal, of either kind, stops at once
                signal.signal(sig, handler)
            self.signalled = signum
            self.stop("interrupted")

        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) not in (signal.SIG_IGN, None):
                previous[sig] = signal.signal(sig, first)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _epoch(self) -> None:
        """The steps left in the current epoch (or up to the end of the run)."""
        cfg, state = self.cfg, self.state
        batches = iter(self.task.train_batches(state.epoch, cfg.batch_size, state.batch, self.info.rank,
                                               self.info.world_size))
        for _ in range(self.steps_per_epoch - state.batch // cfg.grad_accum):
            record = self.step(batches)
            if self.signalled is not None and self.stop_reason == "interrupted":
                name = "Ctrl-C" if self.signalled == signal.SIGINT else "SIGTERM"
                self.echo(f"{name}: stopping after this step with a checkpoint (Ctrl-C or SIGTERM again: stop now, "
                          "losing the steps since the last checkpoint)")
            self._emit("on_train_step", record)
            last = state.step == self.total or self.stop_reason is not None
            if last or state.step == 1 or (cfg.eval_every and state.step % cfg.eval_every == 0):
                self.evaluate()
            if last or self.stop_reason is not None or state.step % self.save_every == 0:
                self.save()
            self._emit("on_step_end")
            if state.step >= self.total or self.stop_reason is not None:
                return

    def step(self, batches) -> dict:
        """One optimizer step (cfg.grad_accum micro-batches from `batches`); its train record."""
        t0 = time.perf_counter()
        lr = lr_at(self.state.step, self.total, self.cfg)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        loss, tokens, grad_norm = self._accumulate(batches)
        self._check_finite("training loss", loss, self.state.step + 1)
        s = self.state
        s.step += 1
        s.batch += self.cfg.grad_accum
        s.tokens_seen += tokens * self.info.world_size
        if s.batch >= self.steps_per_epoch * self.cfg.grad_accum:
            s.epoch, s.batch = s.epoch + 1, 0
        self.last_loss = loss
        s.recent_losses.append(loss)
        rate = tokens * self.info.world_size / max(time.perf_counter() - t0, 1e-9)
        record = {"type": "train", "step": s.step, "epoch": s.epoch + (s.batch > 0), "tokens": s.tokens_seen,
                  "loss": loss, "lr": lr, "tok_per_s": rate}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record

    def _accumulate(self, batches) -> tuple[float, int, float | None]:
        """Accumulate micro-batches, clip, step: (mean loss over ranks, tokens here, gradient norm)."""
        cfg, info = self.cfg, self.info
        loss_sum = torch.zeros((), device=info.device)
        tokens = 0
        for micro in range(cfg.grad_accum):
            batch = move_to(next(batches), info.device)
            sync = micro == cfg.grad_accum - 1 or not info.enabled  # DDP: all-reduce gradients on the last one only
            with (contextlib.nullcontext() if sync else self.ddp_model.no_sync()), self._autocast():
                loss = self.task.loss(self.train_model, batch) / cfg.grad_accum
            loss.backward()
            loss_sum += loss.detach()
            tokens += self.task.batch_tokens(batch)
        grad_norm = None
        if cfg.grad_clip:
            params = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = float(loss_sum)
        if info.enabled:
            step_loss = dist_.all_reduce_sum([step_loss], info.device)[0] / info.world_size
        return step_loss, tokens, grad_norm

    def evaluate(self) -> dict:
        """Validation loss and task metrics (all ranks together); the eval record, also passed to callbacks."""
        cfg, s = self.cfg, self.state
        res = self.mean_over(self.task.val_batches(cfg.batch_size, self.info.rank, self.info.world_size),
                             cfg.eval_batches)
        val = res.pop("loss")
        if val is not None:
            self._check_finite("validation loss", val, s.step)
        text_task = getattr(self.task, "produces_text", False)
        record = {"type": "eval", "step": s.step, "epoch": s.epoch + (s.batch > 0), "tokens": s.tokens_seen,
                  "lr": lr_at(s.step - 1, self.total, cfg),
                  "train_loss": sum(s.recent_losses) / len(s.recent_losses), "val_loss": val,
                  "val_ppl": math.exp(min(val, 700.0)) if val is not None and text_task else None, **res}
        s.recent_losses = []
        if cfg.eval_train_batches:
            train_batches = self.task.train_batches(0, cfg.batch_size, 0, self.info.rank, self.info.world_size)
            record["eval_train_loss"] = self.mean_over(train_batches, cfg.eval_train_batches, loss_only=True)["loss"]
        self.improved = val is not None and (s.best_val_loss is None or val < s.best_val_loss)
        if self.improved:
            s.best_val_loss, s.best_step, s.bad_evals = val, s.step, 0
        elif val is not None:
            s.bad_evals += 1
        self.evals.append(record)
        self._emit("on_evaluate", record)
        return record

    def mean_over(self, batches, max_batches: int | None = None, loss_only: bool = False) -> dict:
        """The task's mean loss and metrics over `batches` of every rank."""
        sums = task_sums(self.eval_model, self.task, batches, self.info.device, loss_only=loss_only,
                         autocast=self._autocast, max_batches=max_batches)
        if self.info.enabled:
            sums = merge_sums(dist_.all_gather_objects(sums))
        return means(sums)

    def save(self) -> Path | None:
        """A checkpoint of the current step (rank 0 writes; every rank gives its RNG state). Its path on rank 0."""
        self._check_model_finite()
        rng_states = dist_.all_gather_objects(ckpt.capture_rng())
        path = None
        if self.info.is_main:
            path = ckpt.save_checkpoint(self.out / "checkpoints", self.model, self.optimizer, self.state, rng_states,
                                        self.cfg.to_dict(), model_config_dict(self.model), self.tokenizer,
                                        self.tokenizer_ref, self.cfg.keep_last)
        dist_.barrier()
        self.last_checkpoint = path
        return path

    def export(self, name: str, info: dict) -> Path:
        """OUT/`name` as a model folder (see `export_model`), never of a non-finite model."""
        self._check_model_finite()
        return export_model(self.model, self.out / name, self.tokenizer, self.tokenizer_ref, info)

    def stop(self, reason: str) -> None:
        """End the run after this step (it is evaluated and saved); the first reason given is kept."""
        self.stop_reason = self.stop_reason or reason

    def echo(self, msg: str) -> None:
        """Print above the progress bar (rank 0 only)."""
        if self.info.is_main:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    # ------------------------------------------------------------------------------------------- setup

    def _start(self) -> None:
        """Output folder, model on its device, optimizer, seeds, resumed state, wrappers; then on_fit_start."""
        cfg, info = self.cfg, self.info
        self._prepare_out_dir()
        self.started = time.perf_counter()
        self.model.to(info.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, cfg, info.device)
        seed_everything(cfg.seed + info.rank)
        if self.resume:
            self._resume()
            if self.state.step >= self.total:
                self.echo(f"the checkpoint is at step {self.state.step}, the run has {plural(self.total, 'step')}: "
                          "nothing left to train (more steps or epochs continue it)")
        if info.is_main:
            cfg.save(self.out / "train_config.json")
        self.ddp_model = dist_.wrap(self.model, info)
        self.train_model = torch.compile(self.ddp_model) if cfg.compile else self.ddp_model
        self.eval_model = torch.compile(self.model) if cfg.compile else self.model
        self.save_every = cfg.save_every or cfg.eval_every or self.total
        n_train = f"{self.model.num_params(trainable_only=True):,}" if hasattr(self.model, "num_params") else "?"
        self.echo(f"training {self.task.name}: {n_train} trainable parameters, {plural(self.total, 'step')} "
                  f"({self.steps_per_epoch} per epoch, {plural(info.world_size, 'process', 'processes')}, "
                  f"global batch {cfg.batch_size * cfg.grad_accum * info.world_size}) on {info.device}; outputs in "
                  f"{self.out}")
        if cfg.max_steps is not None and cfg.max_steps > self.total:
            self.echo(f"note: --max-steps is {cfg.max_steps:,}, but {plural(cfg.epochs, 'epoch')} of this data "
                      f"{'is' if cfg.epochs == 1 else 'are'} {plural(self.total, 'step')}: raise --epochs to train "
                      "longer")
        self._emit("on_fit_start")

    def _prepare_out_dir(self) -> None:
        check_run_folder(self.out, self.resume, self.overwrite)
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                for name in RUN_FOLDERS:
                    shutil.rmtree(self.out / name, ignore_errors=True)
                for name in RUN_FILES:
                    (self.out / name).unlink(missing_ok=True)
        dist_.barrier()

    def _resume(self) -> None:
        """Load the newest good checkpoint (the same one on every rank) and restore the RNGs."""
        info = self.info
        found, problems = ckpt.find_resumable(self.out / "checkpoints") if info.is_main else (None, [])
        for p in problems:
            self.echo(f"warning: skipping damaged checkpoint: {p}")
        found = dist_.broadcast_object(str(found) if found else None)
        if found is None:
            self.echo(f"no checkpoint to resume from in {self.out / 'checkpoints'}; starting from scratch")
            return
        path = Path(found)
        self._check_same_model(path)
        try:  # rank 0's find_resumable has just verified the checkpoint; the other ranks verify it here
            state, rng_states, saved = ckpt.load_checkpoint(path, self.model, self.optimizer, verified=info.is_main)
        except ckpt.CheckpointError as e:
            raise UserError(f"cannot resume from {path}: {e}") from None
        self._warn_changes(saved, state)
        self._place_in_epoch(state, saved.get("batch_size"))
        if info.rank < len(rng_states):
            ckpt.restore_rng(rng_states[info.rank])
        else:
            seed_everything(self.cfg.seed + info.rank + 1_000_003 * state.step)
        state.world_size = info.world_size
        self.state, self.resumed_from, self.last_checkpoint = state, path, path
        self.resumed_at = state.step
        self.echo(f"resumed from {path} (step {state.step}, epoch {state.epoch + 1}, batch {state.batch})")

    def _place_in_epoch(self, state: ckpt.TrainState, saved_batch_size: int | None) -> None:
        """The resumed position in the epoch in this run's micro-batches per process (another batch size, process
        count or grad_accum counts the same examples in other units; data that got shorter may leave none): the
        next epoch when the current one has no whole step left, so that training always moves on."""
        cfg, world = self.cfg, self.info.world_size
        saved_batch_size = saved_batch_size or cfg.batch_size
        if (saved_batch_size, state.world_size) != (cfg.batch_size, world):
            state.batch = state.batch * saved_batch_size * state.world_size // (cfg.batch_size * world)
        state.batch -= state.batch % cfg.grad_accum
        if state.batch >= self.steps_per_epoch * cfg.grad_accum:
            state.epoch, state.batch = state.epoch + 1, 0

    def _check_same_model(self, path: Path) -> None:
        """UserError when the checkpoint holds another model (family, sizes, vocabulary) than the one trained now."""
        saved, now = ckpt.read_model_config(path), model_config_dict(self.model)
        if saved is None or now is None or saved == now:
            return
        keys = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        if saved.get("family") != now.get("family"):
            keys = ["family"]  # every other difference follows from it
        diff = ", ".join(f"{k} {saved.get(k)!r} there, {now.get(k)!r} now" for k in keys[:4])
        raise UserError(f"cannot resume from {path}: it holds another model ({diff}); use the run's model settings "
                        "or another output folder")

    def _warn_changes(self, saved: dict, state: ckpt.TrainState) -> None:
        for key in ("batch_size", "grad_accum", "seed", "lr", "schedule", "warmup_steps", "weight_decay"):
            if saved.get(key) != getattr(self.cfg, key):
                self.echo(f"warning: {key} was {saved.get(key)!r} in the checkpoint and is {getattr(self.cfg, key)!r} "
                          "now; the continuation will differ from the original run")
        was, now = (saved.get("extra") or {}).get("data"), (self.cfg.extra or {}).get("data")
        if was is not None and now is not None and str(was) != str(now):
            self.echo(f"warning: the data was {was!r} in the checkpoint and is {now!r} now; the continuation trains "
                      "on other data than the original run")
        if state.world_size != self.info.world_size:
            self.echo(f"warning: the checkpoint was written by {state.world_size} processes, now "
                      f"{self.info.world_size}: the data order of the current epoch changes")

    # ------------------------------------------------------------------------------------------- helpers

    def _emit(self, hook: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    def _autocast(self):
        if self.info.device.type == "cuda" and self.cfg.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _check_finite(self, what: str, value: float, step: int) -> None:
        if not math.isfinite(value):
            raise UserError(f"training stopped at step {step}: the {what} became {value}; "
                            f"{self._last_good()} (a lower learning rate or stronger gradient clipping may help)")

    def _check_model_finite(self) -> None:
        params = [p.detach() for p in self.model.parameters()]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise UserError(f"training stopped at step {self.state.step}: the model's weights are no longer finite; "
                            f"{self._last_good()}")

    def _last_good(self) -> str:
        if self.last_checkpoint is None:
            return "no checkpoint was written"
        return f"the last good checkpoint, {self.last_checkpoint}, is kept"

    def _result(self) -> TrainResult:
        main, s = self.info.is_main, self.state
        log = next((cb for cb in self.callbacks if isinstance(cb, MetricsLog)), None)
        return TrainResult(
            out_dir=self.out, steps=s.step, tokens_seen=s.tokens_seen, last_train_loss=self.last_loss,
            best_val_loss=s.best_val_loss, best_step=s.best_step, stopped_early=self.stop_reason == "early stopping",
            evals=self.evals, checkpoint=self.last_checkpoint, final_model=self.final_model,
            plot=log.plot if log else None,
            best_model=self.out / "best" if main and self.cfg.export_models and s.best_step is not None else None,
            metrics_path=log.path if log and main else None, resumed_from=self.resumed_from,
            resumed_at=self.resumed_at, seconds=time.perf_counter() - self.started, stop_reason=self.stop_reason,
        )


def train(model: nn.Module, task: Task, cfg: TrainConfig, **kw) -> TrainResult:
    """`Trainer(model, task, cfg, **kw).fit()`."""
    return Trainer(model, task, cfg, **kw).fit()


def plan_steps(task: Task, cfg: TrainConfig, world_size: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps); UserError when the data does not fill one step."""
    n_batches = task.num_train_batches(cfg.batch_size, world_size)
    per_epoch = n_batches // cfg.grad_accum
    if per_epoch == 0:
        raise UserError(
            f"not enough training data for one optimizer step: {n_batches} batch(es) of {cfg.batch_size} per "
            f"process, {cfg.grad_accum} needed per step; use a smaller batch_size, context or grad_accum, or more data",
            params=("batch_size", "grad_accum"),
        )
    total = cfg.epochs * per_epoch
    return per_epoch, total if cfg.max_steps is None else min(total, cfg.max_steps)


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


def model_config_dict(model: nn.Module) -> dict | None:
    """The model's config as a dict (None for a model that is not one of our language models)."""
    from llmscratch.model import config_to_dict

    config = getattr(model, "config", None)
    try:
        return config_to_dict(config) if config is not None else None
    except TypeError:
        return None


def export_model(
    model: nn.Module, folder: Path, tokenizer=None, tokenizer_ref: str | None = None, info: dict | None = None
) -> Path:
    """A model folder loadable by `llmscratch.weights.load_model` (weights/ours.py layout: model.safetensors,
    config.json, tokenizer), plus training.json holding `info` (e.g. the step and validation loss)."""
    from llmscratch.weights.ours import save_pretrained

    if model_config_dict(model) is not None:
        save_pretrained(model, tokenizer_ref if tokenizer_ref is not None else tokenizer, folder)
    else:  # not one of our language models: its weights only
        with atomic_folder(folder) as tmp:
            ckpt.save_model_weights(model, tmp / "model.safetensors")
    if info is not None:
        atomic_write_text(folder / "training.json", json.dumps(info, indent=2) + "\n")
    return folder
