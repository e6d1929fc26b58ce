"""The one training loop: schedule, optimizer groups, learning, accumulation, outputs, early stopping, errors."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from llmscratch.data.pretrain import WindowDataset
from llmscratch.model import build_model, get_config
from llmscratch.train.config import TrainConfig, lr_at
from llmscratch.train.plots import plot_metrics, read_metrics
from llmscratch.train.tasks import BaseTask, Task, move_to
from llmscratch.train.tasks.pretrain import PretrainTask
from llmscratch.train.trainer import build_optimizer, seed_everything, train
from llmscratch.utils import UserError


def periodic_ids(n: int = 2000, period: int = 7, vocab: int = 64) -> torch.Tensor:
    """A learnable token stream: a short cycle with a little noise."""
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(n) % period * 3 % vocab
    noise = torch.rand(n, generator=g) < 0.05
    return torch.where(noise, torch.randint(0, vocab, (n,), generator=g), ids)


def tiny_setup(dropout: float = 0.0, n: int = 2000, seed: int = 1):
    seed_everything(seed)
    model = build_model(get_config("gpt2-tiny", vocab_size=64, context_length=16, dropout=dropout))
    ids = periodic_ids(n)
    cut = int(0.9 * n)
    task = PretrainTask(WindowDataset(ids[:cut], 16, 16), WindowDataset(ids[cut:], 16, 16), seed=seed)
    return model, task


def cfg_for(tmp_path, **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / "run"), epochs=1, batch_size=4, lr=3e-3, eval_every=10, progress=False,
                device="cpu", sample_prompt=None)
    base.update(kw)
    return TrainConfig(**base)


def test_lr_schedule_warmup_cosine_floor_and_constant():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, 110, cfg) == pytest.approx(0.1)
    assert lr_at(9, 110, cfg) == pytest.approx(1.0)
    assert lr_at(10, 110, cfg) == pytest.approx(1.0)
    assert lr_at(109, 110, cfg) == pytest.approx(0.1)
    mid = lr_at(10 + 99 // 2, 110, cfg)
    assert 0.5 < mid < 0.6  # halfway down the cosine: (1 + 0.1) / 2
    lrs = [lr_at(s, 110, cfg) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    const = TrainConfig(lr=0.5, schedule="constant", warmup_steps=0)
    assert {lr_at(s, 50, const) for s in range(50)} == {0.5}
    assert lr_at(0, 10, TrainConfig(lr=1.0)) == pytest.approx(1.0)  # default floor lr/10, no warmup


def test_weight_decay_only_on_matrices_and_tied_weight_once():
    model = build_model(get_config("gpt2-tiny"))
    opt = build_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # the tied head is not a second parameter
    assert opt.defaults.get("fused") in (True, None)


def test_frozen_parameters_are_not_trained(tmp_path):
    model, task = tiny_setup()
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(UserError, match="no trainable parameters"):
        train(model, task, cfg_for(tmp_path, max_steps=2))


def test_loss_falls_and_run_writes_its_outputs(tmp_path):
    model, task = tiny_setup()
    cfg = cfg_for(tmp_path, epochs=2, warmup_steps=3, eval_every=10)
    r = train(model, task, cfg)
    assert r.steps == 2 * (len(task.train) // 4) == 56
    assert r.evals[-1]["val_loss"] < r.evals[0]["val_loss"] - 1.0
    assert r.last_train_loss < 2.5 and math.isclose(r.evals[-1]["val_ppl"], math.exp(r.evals[-1]["val_loss"]))
    records = read_metrics(r.metrics_path)
    assert [x["step"] for x in records if x["type"] == "train"] == list(range(1, 57))
    assert [x["step"] for x in records if x["type"] == "eval"] == [1, 10, 20, 30, 40, 50, 56]
    assert records[-1]["tokens"] == 56 * 4 * 16
    assert r.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert TrainConfig.load(tmp_path / "run" / "train_config.json") == cfg
    # the final and best model folders hold loadable weights
    from llmscratch.train.checkpoint import load_model_weights

    fresh = build_model(model.config)
    load_model_weights(fresh, r.final_model / "model.safetensors")
    x = torch.randint(0, 64, (1, 16))
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))
    assert fresh.head.weight is fresh.tok_emb.weight
    assert json.loads((r.final_model / "config.json").read_text())["family"] == "gpt2"
    best = json.loads((tmp_path / "run" / "best" / "training.json").read_text())
    assert best["step"] == r.best_step and best["val_loss"] == pytest.approx(r.best_val_loss)


def test_grad_accumulation_matches_the_bigger_batch(tmp_path):
    runs = []
    for bs, accum in ((4, 1), (2, 2)):
        model, task = tiny_setup()
        r = train(model, task, cfg_for(tmp_path / f"b{bs}", max_steps=8, batch_size=bs, grad_accum=accum))
        runs.append([x["loss"] for x in read_metrics(r.metrics_path) if x["type"] == "train"])
    assert len(runs[0]) == 8
    assert runs[0] == pytest.approx(runs[1], abs=1e-5)


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    losses = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        model, task = tiny_setup(dropout=0.1, seed=seed)
        r = train(model, task, cfg_for(tmp_path / name, max_steps=5, seed=seed))
        losses.append([x["loss"] for x in read_metrics(r.metrics_path) if x["type"] == "train"])
    assert losses[0] == losses[1]
    assert losses[0] != losses[2]


class MirrorTask(BaseTask):
    """A non-text task: learn y = W x on train, validate on y = -W x (val loss rises while train loss falls)."""

    name = "mirror"

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(64, 4, generator=g)
        self.w = torch.randn(4, 4, generator=g)

    def num_train_batches(self, batch_size, world_size=1):
        return 64 // (batch_size * world_size)

    def train_batches(self, epoch, batch_size, start=0, rank=0, world_size=1):
        for b in range(start, self.num_train_batches(batch_size, world_size)):
            x = self.x[(b * world_size + rank) * batch_size : (b * world_size + rank + 1) * batch_size]
            yield {"x": x, "y": x @ self.w}

    def val_batches(self, batch_size, rank=0, world_size=1):
        yield {"x": self.x[:16], "y": -(self.x[:16] @ self.w)}

    def loss(self, model, batch):
        return ((model(batch["x"]) - batch["y"]) ** 2).mean()

    def metrics(self, model, batch):
        close = ((model(batch["x"]) - batch["y"]).abs() < 0.5).float()
        return {"accuracy": (close.sum().item(), close.numel())}


def test_generic_task_metrics_and_early_stopping(tmp_path):
    torch.manual_seed(0)
    task = MirrorTask()
    assert isinstance(task, Task)
    model = nn.Linear(4, 4, bias=False)
    r = train(model, task, cfg_for(tmp_path, epochs=50, batch_size=8, lr=0.05, eval_every=2, patience=2,
                                   weight_decay=0.0))
    assert r.stopped_early and r.steps < 50 * 8
    evals = [x for x in read_metrics(r.metrics_path) if x["type"] == "eval"]
    assert len(evals) == len(r.evals) >= 3
    assert all(0.0 <= e["accuracy"] <= 1.0 for e in evals)
    assert evals[-1]["val_loss"] > evals[-3]["val_loss"]  # it stopped because validation got worse
    assert r.best_step == evals[-3]["step"] and r.plot.exists()
    assert (r.final_model / "model.safetensors").exists() and not (r.final_model / "config.json").exists()


def test_time_limit_stops_after_an_evaluation_and_a_save(tmp_path):
    model, task = tiny_setup()
    r = train(model, task, cfg_for(tmp_path, epochs=3, max_seconds=1e-6, eval_every=100))
    assert r.steps == 1 and r.stop_reason == "time limit" and not r.stopped_early
    assert [e["step"] for e in r.evals] == [1] and r.checkpoint.name == "step-00000001"


def test_plot_includes_extra_metrics(tmp_path):
    records = [{"type": "train", "step": s, "tokens": 10 * s, "loss": 5 - s / 10} for s in range(1, 11)]
    records += [{"type": "eval", "step": s, "tokens": 10 * s, "val_loss": 5 - s / 20, "train_loss": 5,
                 "accuracy": s / 10} for s in (5, 10)]
    path = plot_metrics(records, tmp_path / "p.png", title="t")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert plot_metrics([], tmp_path / "q.png") is None


def test_sample_generation_at_each_evaluation(tmp_path):
    from llmscratch.tokenizer import train as train_bpe

    text = "the cat sat on the mat. " * 200
    tok = train_bpe(text, 270)
    seed_everything(0)
    model = build_model(get_config("gpt2-tiny", vocab_size=tok.vocab_size, context_length=32))
    ids = tok.encode(text)
    task = PretrainTask(WindowDataset(ids[:-200], 32, 32), WindowDataset(ids[-200:], 32, 32))
    r = train(model, task, cfg_for(tmp_path, max_steps=3, eval_every=3, sample_prompt="the cat", sample_tokens=5),
              tokenizer=tok)
    assert all(isinstance(e["sample"], str) for e in r.evals)


def test_existing_run_needs_resume_or_overwrite(tmp_path):
    model, task = tiny_setup()
    train(model, task, cfg_for(tmp_path, max_steps=2))
    with pytest.raises(UserError, match="resume=True"):
        train(model, task, cfg_for(tmp_path, max_steps=2))
    r = train(model, task, cfg_for(tmp_path, max_steps=3), overwrite=True)
    assert r.steps == 3
    assert [x["step"] for x in read_metrics(r.metrics_path) if x["type"] == "train"] == [1, 2, 3]


def test_user_errors_before_any_work(tmp_path):
    model, task = tiny_setup(n=200)
    with pytest.raises(UserError, match="not enough training data"):
        train(model, task, cfg_for(tmp_path, batch_size=64))
    with pytest.raises(UserError, match="batch_size must be >= 1"):
        train(model, task, cfg_for(tmp_path, batch_size=0))
    with pytest.raises(UserError, match="min_lr"):
        train(model, task, cfg_for(tmp_path, min_lr=1.0))


def test_diverging_loss_is_reported(tmp_path):
    class NanTask(MirrorTask):
        def loss(self, model, batch):
            return super().loss(model, batch) * float("nan")

    with pytest.raises(UserError, match="stopped at step 1: the training loss became nan; no checkpoint"):
        train(nn.Linear(4, 4), NanTask(), cfg_for(tmp_path, batch_size=8))
    assert not (tmp_path / "run" / "final").exists() and not (tmp_path / "run" / "best").exists()


def test_non_finite_loss_keeps_the_last_good_checkpoint_and_best_model(tmp_path):
    """The loss turns NaN at step 5: the run stops there, checkpoints 1-4 and best/ hold finite weights,
    no final/ is written, and the run resumes from step 4."""
    from llmscratch.train.checkpoint import list_checkpoints, load_model_weights

    class LateNan(MirrorTask):
        calls = 0

        def loss(self, model, batch):
            self.calls += model.training
            loss = super().loss(model, batch)
            return loss * float("nan") if model.training and self.calls == 5 else loss

    torch.manual_seed(0)
    cfg = cfg_for(tmp_path, epochs=3, batch_size=8, eval_every=1, save_every=1, keep_last=10)
    with pytest.raises(UserError, match=r"stopped at step 5: the training loss became nan; the last good "
                                        r"checkpoint, .*step-00000004, is kept"):
        train(nn.Linear(4, 4), LateNan(), cfg)
    run = tmp_path / "run"
    assert [p.name for p in list_checkpoints(run / "checkpoints")][-1] == "step-00000004"
    assert not (run / "final").exists()
    best = nn.Linear(4, 4)
    load_model_weights(best, run / "best" / "model.safetensors")
    assert all(torch.isfinite(p).all() for p in best.parameters())
    r = train(nn.Linear(4, 4), MirrorTask(), dataclasses.replace(cfg, max_steps=6), resume=True)
    assert r.resumed_from.name == "step-00000004" and r.steps == 6


def test_non_finite_weights_are_never_saved(tmp_path):
    """Weights that turn non-finite while the training loss is still finite: the evaluation of that step (or the
    save) stops the run; best/ keeps the earlier, finite model."""
    from llmscratch.train.callbacks import Callback

    class Poison(Callback):
        def on_train_step(self, trainer, record):
            if record["step"] == 3:
                with torch.no_grad():
                    trainer.model.weight.fill_(float("inf"))

    torch.manual_seed(0)
    with pytest.raises(UserError, match="stopped at step 3: the validation loss became"):
        train(nn.Linear(4, 4), MirrorTask(), cfg_for(tmp_path, batch_size=8, eval_every=1), callbacks=[Poison()])
    best = json.loads((tmp_path / "run" / "best" / "training.json").read_text())
    assert best["step"] <= 2 and math.isfinite(best["val_loss"])
    with pytest.raises(UserError, match="stopped at step 3: the model's weights are no longer finite"):
        train(nn.Linear(4, 4), MirrorTask(), cfg_for(tmp_path, batch_size=8, eval_every=0, save_every=3,
                                                      max_steps=4), callbacks=[Poison()], overwrite=True)


def test_tensorboard_optional(tmp_path, capsys):
    model, task = tiny_setup()
    train(model, task, cfg_for(tmp_path, max_steps=2, tensorboard=True))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        captured = capsys.readouterr()
        assert "tensorboard package is not installed" in captured.err + captured.out
    else:
        assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_move_to_handles_nested_batches():
    batch = {"a": torch.ones(2), "b": [torch.zeros(1), (torch.ones(1), 3)], "c": "text"}
    moved = move_to(batch, torch.device("cpu"))
    assert moved["c"] == "text" and moved["b"][1][1] == 3 and torch.equal(moved["a"], batch["a"])


def test_ctrl_c_finishes_the_step_saves_and_resume_continues(tmp_path):
    import os
    import signal

    from llmscratch.train.callbacks import Callback

    class CtrlCAtStep3(Callback):
        def on_train_step(self, trainer, record):
            if record["step"] == 3 and not trainer.resume:
                os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C: delivered to the main thread

    model, task = tiny_setup()
    cfg = cfg_for(tmp_path, max_steps=6, eval_every=100)
    with pytest.raises(KeyboardInterrupt):
        train(model, task, cfg, callbacks=[CtrlCAtStep3()])
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003"]
    assert not (run / "final").exists()  # an interrupted run is not a finished one
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works as before afterwards
    model, task = tiny_setup()
    r = train(model, task, cfg, resume=True)
    assert r.steps == 6 and r.stop_reason is None
    model, task = tiny_setup()  # the same 6 steps without the interruption end with the same loss
    assert train(model, task, cfg_for(tmp_path / "b", max_steps=6, eval_every=100)).last_train_loss == r.last_train_loss


@pytest.mark.parametrize("batch_size,n", [(8, 2000), (4, 1000)])
def test_resume_with_another_batch_size_or_less_data_moves_on(tmp_path, capsys, batch_size, n):
    """The position in the epoch is counted again in the new batches (4 -> 8: 26 batches of 4 are 13 of 8); where
    the epoch has no step left (data that got shorter), the next one starts. Both used to spin without a step."""
    from llmscratch.train.callbacks import Callback

    class StopAt26(Callback):
        def on_train_step(self, trainer, record):
            if record["step"] == 26:
                trainer.stop("test")

    model, task = tiny_setup()  # 112 windows: 28 steps of 4 per epoch
    train(model, task, cfg_for(tmp_path, epochs=3), callbacks=[StopAt26()])
    model, task = tiny_setup(n=n)
    r = train(model, task, cfg_for(tmp_path, epochs=3, batch_size=batch_size, max_seconds=120), resume=True)
    assert r.stop_reason is None and r.steps == 42  # 3 epochs of 14 steps either way
    where = "epoch 2, batch 0" if n == 1000 else "epoch 1, batch 13"  # 1000 ids: 56 windows, 14 steps of 4
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000026"
    assert f"resumed from {checkpoint} (step 26, {where})" in capsys.readouterr().out


def test_sigterm_finishes_the_step_saves_and_hands_the_signal_on(tmp_path):
    """`timeout`, job schedulers and `docker stop` send SIGTERM: the step ends with a checkpoint, then the signal
    goes to the handler there was before (the CLI's, which ends the process with "terminated")."""
    import os
    import signal

    from llmscratch.train.callbacks import Callback

    class Terminated(Exception):
        pass

    def cli_handler(signum, frame):
        raise Terminated

    class SigtermAtStep3(Callback):
        def on_train_step(self, trainer, record):
            if record["step"] == 3:
                os.kill(os.getpid(), signal.SIGTERM)

    model, task = tiny_setup()
    before = signal.signal(signal.SIGTERM, cli_handler)
    try:
        with pytest.raises(Terminated):
            train(model, task, cfg_for(tmp_path, max_steps=6, eval_every=100), callbacks=[SigtermAtStep3()])
        assert signal.getsignal(signal.SIGTERM) is cli_handler
    finally:
        signal.signal(signal.SIGTERM, before)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000003"]
    assert not (tmp_path / "run" / "final").exists()


def test_a_signal_is_never_lost_and_a_second_one_stops_at_once(tmp_path):
    """SIGTERM in a step that stops for another reason (a time limit) still reaches the caller after the run
    ends (final model written); Ctrl-C then SIGTERM: the second stops at once, whatever its kind."""
    import os
    import signal

    from llmscratch.train.callbacks import Callback

    class Terminated(Exception):
        pass

    def cli_handler(signum, frame):
        raise Terminated

    class At(Callback):
        def __init__(self, *signals, reason=None):
            self.signals, self.reason = signals, reason

        def on_train_step(self, trainer, record):
            if record["step"] == 2:
                if self.reason:
                    trainer.stop(self.reason)
                for sig in self.signals:
                    os.kill(os.getpid(), sig)

    before = signal.signal(signal.SIGTERM, cli_handler)
    try:
        model, task = tiny_setup()
        with pytest.raises(Terminated):
            train(model, task, cfg_for(tmp_path / "a", max_steps=6), callbacks=[At(signal.SIGTERM, reason="time")])
        assert (tmp_path / "a" / "run" / "final").is_dir()  # the run had ended anyway: its model is kept
        model, task = tiny_setup()
        with pytest.raises(Terminated):
            train(model, task, cfg_for(tmp_path / "b", max_steps=6), callbacks=[At(signal.SIGINT, signal.SIGTERM)])
        assert not (tmp_path / "b" / "run" / "checkpoints").exists() or not any(
            (tmp_path / "b" / "run" / "checkpoints").iterdir())  # stopped at once, before step 2 was saved
    finally:
        signal.signal(signal.SIGTERM, before)


def test_resume_and_overwrite_together_are_refused(tmp_path):
    model, task = tiny_setup()
    with pytest.raises(UserError, match="resume=True .* overwrite=True"):
        train(model, task, cfg_for(tmp_path, max_steps=1), resume=True, overwrite=True)
