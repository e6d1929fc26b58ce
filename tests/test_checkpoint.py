"""Checkpoints: weights (tied), optimizer and RNG round trips without pickle, manifest checks, exact resume
after a crash (in-process), fallback to the previous checkpoint when the newest one is damaged, retention."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

from llmscratch.data.pretrain import WindowDataset
from llmscratch.model import build_model, get_config
from llmscratch.train import checkpoint as ckpt
from llmscratch.train.callbacks import Callback
from llmscratch.train.config import TrainConfig
from llmscratch.train.plots import read_metrics
from llmscratch.train.tasks.pretrain import PretrainTask
from llmscratch.train.trainer import build_optimizer, seed_everything, train
from llmscratch.utils import UserError
from llmscratch.weights.ours import model_tensors


def make(dropout: float = 0.1):
    seed_everything(5)
    model = build_model(get_config("gpt2-tiny", vocab_size=64, context_length=16, dropout=dropout))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (1500,), generator=g) // 2 * 2  # even ids only: something to learn
    task = PretrainTask(WindowDataset(ids[:1300], 16, 16), WindowDataset(ids[1300:], 16, 16), seed=5)
    return model, task


def config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(out_dir=str(tmp_path / name), epochs=2, batch_size=4, grad_accum=2, lr=3e-3, warmup_steps=2,
                eval_every=4, save_every=3, keep_last=2, progress=False, device="cpu", sample_prompt=None)
    base.update(kw)
    return TrainConfig(**base)


class Killed(Exception):
    pass


class CrashAfter(Callback):
    """A crash at the end of step `step` (after its evaluation and checkpoint, if any)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.state.step == self.step:
            raise Killed


def run_until_killed(tmp_path, step: int, name="run"):
    """Train until a crash after `step`."""
    model, task = make()
    with pytest.raises(Killed):
        train(model, task, config(tmp_path, name), callbacks=[CrashAfter(step)])


def train_losses(result) -> list[float]:
    return [r["loss"] for r in read_metrics(result.metrics_path) if r["type"] == "train"]


def test_weights_roundtrip_with_tied_head(tmp_path):
    model, _ = make()
    path = tmp_path / "m.safetensors"
    ckpt.save_model_weights(model, path)
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        assert json.loads(f.metadata()["aliases"]) == {"head.weight": "tok_emb.weight"}
    assert "tok_emb.weight" in keys and "head.weight" not in keys
    torch.manual_seed(99)
    other = build_model(model.config)
    ckpt.load_model_weights(other, path)
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    assert other.head.weight is other.tok_emb.weight


def test_optimizer_and_rng_roundtrip(tmp_path):
    model, task = make()
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    x, y = next(task.train_batches(0, 4))
    task.loss(model, (x, y)).backward()
    opt.step()
    ckpt.save_optimizer(opt, model, tmp_path)
    opt2 = build_optimizer(model, TrainConfig(lr=1.0), torch.device("cpu"))
    ckpt.load_optimizer(opt2, model, tmp_path)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i in a["state"]:
        for k in a["state"][i]:
            assert torch.equal(a["state"][i][k], b["state"][i][k])

    state = ckpt.capture_rng()
    first = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_checkpoint_folder_layout_has_no_pickle(tmp_path):
    model, task = make()
    r = train(model, task, config(tmp_path, epochs=1, save_every=4))
    folders = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [f.name for f in folders] == ["step-00000008", "step-00000010"]  # keep_last=2 of 4, 8, 10 (the end)
    names = {p.name for p in folders[-1].iterdir()}
    assert names == {"model.safetensors", "config.json", "tokenizer.ref.json", "optimizer.safetensors",
                     "optimizer.json", "rng.safetensors", "state.json", "manifest.json"}
    assert all(n.endswith((".json", ".safetensors")) for n in names)
    manifest = json.loads((folders[-1] / "manifest.json").read_text())["files"]
    assert set(manifest) == names - {"manifest.json"}
    state = json.loads((folders[-1] / "state.json").read_text())
    assert state["state"]["step"] == 10 and state["state"]["epoch"] == 1 and state["state"]["batch"] == 0
    assert state["train_config"]["batch_size"] == 4
    assert r.checkpoint == folders[-1]
    assert not [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]  # no leftovers


def test_verify_detects_truncated_altered_and_missing_files(tmp_path):
    model, task = make()
    train(model, task, config(tmp_path, epochs=1, save_every=10))
    folder = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    ckpt.verify(folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.verify(folder)
    (folder / "model.safetensors").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.verify(folder)
    (folder / "model.safetensors").write_bytes(data)
    (folder / "optimizer.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="optimizer.json is missing"):
        ckpt.verify(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ckpt.CheckpointError, match="manifest.json is missing"):
        ckpt.verify(folder)


def test_resume_after_crash_is_exact(tmp_path):
    model, task = make()
    full = train(model, task, config(tmp_path, "full"))
    assert full.steps == 2 * (len(task.train) // 8)  # 2 epochs of 10 steps (4 x 2 accumulation)
    # crash mid-epoch at step 8: the newest checkpoint is step 6 (save_every=3), three micro-batch pairs in
    run_until_killed(tmp_path, 8)
    model, task = make()
    resumed = train(model, task, config(tmp_path), resume=True)
    assert resumed.resumed_from.name == "step-00000006"
    assert train_losses(resumed) == train_losses(full)  # bit for bit, steps 1-20
    def evals(r):
        return [(e["step"], e["tokens"], e["train_loss"], e["val_loss"]) for e in read_metrics(r.metrics_path)
                if e["type"] == "eval"]

    assert evals(resumed) == evals(full)
    final_a = model_tensors(build_and_load(full.final_model))[0]
    final_b = model_tensors(build_and_load(resumed.final_model))[0]
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)


def build_and_load(folder):
    model, _ = make()
    ckpt.load_model_weights(model, folder / "model.safetensors")
    return model


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, capsys):
    model, task = make()
    full = train(model, task, config(tmp_path, "full", epochs=1))
    run_until_killed(tmp_path, 7)
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-00000003", "step-00000006"]
    newest = root / "step-00000006" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])  # half-written weights
    capsys.readouterr()
    model, task = make()
    resumed = train(model, task, config(tmp_path, epochs=1), resume=True)
    out = capsys.readouterr()
    assert "skipping damaged checkpoint" in out.out + out.err and "step-00000006" in out.out + out.err
    assert resumed.resumed_from.name == "step-00000003"
    assert train_losses(resumed) == train_losses(full)


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    model, task = make()
    r = train(model, task, config(tmp_path, max_steps=2), resume=True)
    assert r.steps == 2 and r.resumed_from is None
    assert "starting from scratch" in capsys.readouterr().out


def test_format_version_old_folders_resume_newer_ones_are_refused(tmp_path):
    model, task = make()
    train(model, task, config(tmp_path, max_steps=3, save_every=3))
    folder = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    payload = json.loads((folder / "state.json").read_text())
    assert (payload["format"], payload["version"]) == ("llmscratch-checkpoint", 1)
    del payload["format"], payload["version"]  # as written before versions were recorded: read as version 1
    (folder / "state.json").write_text(json.dumps(payload))
    ckpt.write_manifest(folder)
    model, task = make()
    assert train(model, task, config(tmp_path, max_steps=4), resume=True).resumed_from == folder
    folder = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    payload = json.loads((folder / "state.json").read_text())
    (folder / "state.json").write_text(json.dumps({**payload, "version": 2}))
    ckpt.write_manifest(folder)
    model, task = make()
    with pytest.raises(UserError, match="checkpoint format 'llmscratch-checkpoint' version 2; this llmscratch reads"):
        train(model, task, config(tmp_path, max_steps=5), resume=True)


def test_resuming_another_size_is_one_short_line(tmp_path):
    model, task = make()
    train(model, task, config(tmp_path, max_steps=3, save_every=3))
    seed_everything(5)
    bigger = build_model(get_config("gpt2-tiny", vocab_size=64, context_length=16, dropout=0.1, emb_dim=64))
    with pytest.raises(UserError) as e:
        train(bigger, task, config(tmp_path, max_steps=4), resume=True)
    message = str(e.value)
    assert "holds another model (emb_dim 32 there, 64 now)" in message
    assert "\n" not in message and len(message) < 300
    # without a model config to compare (weights alone), the weights say how they differ, briefly
    folder = ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.load_model_weights(bigger, folder / "model.safetensors")
    message = str(e.value)
    assert "holds weights of another model: shapes differ: " in message and "more" in message
    assert "\n" not in message and len(message) < 400
    assert ckpt.weights_difference(model.state_dict(), model.state_dict()) is None
    less = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.1.")}
    assert ckpt.weights_difference(less, model.state_dict()).startswith("not saved: blocks.1.")
    assert ckpt.weights_difference(model.state_dict(), less).startswith("not in this model: blocks.1.")
