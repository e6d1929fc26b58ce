"""Checkpoints: one folder per saved step, written atomically, verified on load, no pickle anywhere.

Layout of `OUT/checkpoints/step-00000120/`:

    model.safetensors      every model weight (a tensor shared by two names, e.g. a tied head, stored once)
    config.json            the model config (with "family"), so the folder loads like a final model folder
    tokenizer.json|.ref    the tokenizer file (our format) or, for a named tokenizer, a JSON reference to it
    optimizer.safetensors  optimizer tensors (AdamW moments and step counts) keyed "state.<param>.<name>"
    optimizer.json         the rest of the optimizer state (param groups, hyperparameters, parameter names)
    rng.safetensors        per-rank torch / CUDA / numpy generator states
    state.json             format version, step, data position (epoch, batch), tokens seen, best val loss,
                           python RNG, the training config
    manifest.json          size and sha256 of every other file (written last)

The folder is written as `.tmp-step-...` and renamed into place, so a crash never leaves a half folder under a
real name; a file damaged later (truncated, missing) fails the manifest check and the previous good checkpoint
is used instead. Only the newest `keep_last` folders are kept; the model with the best validation loss is
written apart, as a model folder (`OUT/best/`, see trainer.py).

Format versions: 1 (state.json without a "version" entry, before versions were recorded, is the same).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from llmscratch.utils import UserError, atomic_folder
from llmscratch.weights.ours import read_weights, save_weights, write_tokenizer

CHECKPOINT_RE = re.compile(r"^step-(\d{8,})$")
MANIFEST = "manifest.json"
FORMAT = "llmscratch-checkpoint"
VERSION = 1  # of the checkpoint folder layout; raised when a change would misread older folders


class CheckpointError(Exception):
    """A checkpoint folder that is incomplete or damaged."""


@dataclass
class TrainState:
    """Where training stands: enough, with weights, optimizer and RNG, to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch (0-based)
    batch: int = 0  # next micro-batch index of this epoch (per rank)
    tokens_seen: int = 0  # over all ranks
    best_val_loss: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the last improvement (early stopping)
    world_size: int = 1
    recent_losses: list[float] = field(default_factory=list)  # train losses since the last evaluation
    extra: dict = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


# ------------------------------------------------------------------------------------------------ weights


def save_model_weights(model: nn.Module, path: str | Path) -> None:
    """All model weights to one safetensors file; a tied tensor once, its other names in the metadata."""
    save_weights(model, path)


def load_model_weights(model: nn.Module, path: str | Path) -> None:
    """Load a file written by `save_model_weights` into `model` (every tensor must match)."""
    try:
        tensors = read_weights(path)
    except UserError as e:
        raise CheckpointError(f"{path}: {e}") from None
    if (difference := weights_difference(tensors, model.state_dict())) is not None:
        raise CheckpointError(f"{path} holds weights of another model: {difference}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: {str(e).splitlines()[0][:300]}") from None


def weights_difference(saved: dict[str, torch.Tensor], now: dict[str, torch.Tensor]) -> str | None:
    """A short line saying how two state dicts differ (the first few names and shapes), None when they fit."""
    missing = [k for k in now if k not in saved]
    extra = [k for k in saved if k not in now]
    shapes = [f"{k} {tuple(saved[k].shape)} there, {tuple(now[k].shape)} now"
              for k in now if k in saved and saved[k].shape != now[k].shape]

    def few(what: str, items: list[str]) -> str:
        more = f" and {len(items) - 2} more" if len(items) > 2 else ""
        return f"{what} {', '.join(items[:2])}{more}"

    parts = [few(what, items) for what, items in (("shapes differ:", shapes), ("not saved:", missing),
                                                    ("not in this model:", extra)) if items]
    return "; ".join(parts) if parts else None


# ------------------------------------------------------------------------------------------------ optimizer


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names.get(id(p), "?") for p in g["params"]] for g in optimizer.param_groups]


def save_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, folder: Path) -> None:
    """Optimizer state: tensors to optimizer.safetensors, everything else to optimizer.json."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                plain.setdefault(str(idx), {})[k] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    save_file(tensors, str(folder / "optimizer.safetensors"))
    meta = {"param_groups": groups, "plain_state": plain, "param_names": _param_names(model, optimizer)}
    (folder / "optimizer.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    if meta["param_names"] != _param_names(model, optimizer):
        raise CheckpointError(f"{folder}: the optimizer's parameters differ from the model's trainable parameters")
    state: dict[int, dict] = {}
    for key, t in load_file(str(folder / "optimizer.safetensors")).items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = t
    for idx, st in meta["plain_state"].items():
        state.setdefault(int(idx), {}).update(st)
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ------------------------------------------------------------------------------------------------ RNG


def capture_rng() -> dict:
    """This process's generator states: tensors under "tensors", JSON-able values under "plain"."""
    np_state = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    py = random.getstate()
    plain = {
        "numpy": {"algo": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": {"version": py[0], "state": list(py[1]), "gauss_next": py[2]},
    }
    return {"tensors": tensors, "plain": plain}


def restore_rng(rng: dict) -> None:
    t, p = rng["tensors"], rng["plain"]
    torch.set_rng_state(t["torch"])
    cuda = [t[k] for k in sorted((k for k in t if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = p["numpy"]
    np.random.set_state((n["algo"], t["numpy"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = p["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


def _save_rng(states: list[dict], folder: Path) -> dict:
    tensors = {f"rank{r}.{k}": v.contiguous() for r, s in enumerate(states) for k, v in s["tensors"].items()}
    save_file(tensors, str(folder / "rng.safetensors"))
    return {str(r): s["plain"] for r, s in enumerate(states)}


def _load_rng(folder: Path, plain: dict) -> list[dict]:
    tensors = load_file(str(folder / "rng.safetensors"))
    states = []
    for r in sorted(plain, key=int):
        prefix = f"rank{r}."
        states.append({"tensors": {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                       "plain": plain[r]})
    return states


# ------------------------------------------------------------------------------------------------ manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path) -> None:
    """manifest.json: size and sha256 of every file in `folder` (flushed to disk first)."""
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name == MANIFEST or not p.is_file():
            continue
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        files[p.name] = {"size": p.stat().st_size, "sha256": _sha256(p)}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")


def verify(folder: str | Path) -> None:
    """Raise CheckpointError when a file of the checkpoint is missing, of the wrong size, or altered."""
    folder = Path(folder)
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{folder}: {MANIFEST} is missing (incomplete checkpoint)")
    try:
        files = json.loads(mpath.read_text())["files"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{folder}: {MANIFEST} is unreadable: {e}") from None
    for name, info in files.items():
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"{folder}: {name} is missing")
        if p.stat().st_size != info["size"]:
            raise CheckpointError(
                f"{folder}: {name} has {p.stat().st_size} bytes, expected {info['size']} (truncated?)"
            )
        if _sha256(p) != info["sha256"]:
            raise CheckpointError(f"{folder}: {name} does not match its sha256 (corrupted)")


# ------------------------------------------------------------------------------------------------ save / load


def save_checkpoint(
    root: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    rng_states: list[dict],
    train_config: dict,
    model_config: dict | None = None,
    tokenizer=None,
    tokenizer_ref: str | None = None,
    keep_last: int = 3,
) -> Path:
    """Write checkpoint `step-<state.step>` under `root` atomically; then drop all but the newest keep_last."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(state.step)
    with atomic_folder(final) as tmp:  # the same step saved again (after a resume) is replaced
        save_model_weights(model, tmp / "model.safetensors")
        if model_config is not None:
            (tmp / "config.json").write_text(json.dumps(model_config, indent=2) + "\n")
        write_tokenizer(tmp, tokenizer_ref if tokenizer_ref is not None else tokenizer)
        save_optimizer(optimizer, model, tmp)
        rng_plain = _save_rng(rng_states, tmp)
        payload = {"format": FORMAT, "version": VERSION, "state": asdict(state), "rng": rng_plain,
                   "train_config": train_config}
        (tmp / "state.json").write_text(json.dumps(payload, indent=1) + "\n")
        write_manifest(tmp)
    prune(root, keep_last)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` checkpoints; clear leftover folders of interrupted saves."""
    ckpts = list_checkpoints(root)
    for p in ckpts[: max(0, len(ckpts) - keep_last)]:
        shutil.rmtree(p, ignore_errors=True)
    for p in [*root.glob(".step-*.old-*"), *root.glob(".step-*.tmp")]:  # left by a save that was killed
        shutil.rmtree(p, ignore_errors=True)


def find_resumable(root: str | Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint that passes `verify`, and a message per newer one that did not."""
    problems = []
    for p in reversed(list_checkpoints(root)):
        try:
            verify(p)
            return p, problems
        except CheckpointError as e:
            problems.append(str(e))
    return None, problems


def read_model_config(folder: str | Path) -> dict | None:
    """The model config a checkpoint was saved with (None when it has none, e.g. not one of our models)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is unreadable: {e}") from None


def load_checkpoint(
    folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, verified: bool = False
) -> tuple[TrainState, list[dict], dict]:
    """Load weights (and optimizer state) from a checkpoint, verifying it first unless the caller just did
    (`verified`): (state, per-rank RNG states, train config)."""
    folder = Path(folder)
    if not verified:
        verify(folder)
    payload = json.loads((folder / "state.json").read_text())
    version = payload.get("version", 1)  # folders written before versions were recorded are version 1
    if payload.get("format", FORMAT) != FORMAT or version != VERSION:
        raise CheckpointError(f"{folder} has checkpoint format {payload.get('format', FORMAT)!r} version {version}; "
                              f"this llmscratch reads {FORMAT!r} version {VERSION}")
    try:
        state = TrainState(**payload["state"])
    except TypeError as e:
        raise CheckpointError(f"{folder}: state.json does not fit checkpoint format version {VERSION}: {e}") from None
    load_model_weights(model, folder / "model.safetensors")
    if optimizer is not None:
        load_optimizer(optimizer, model, folder)
    return state, _load_rng(folder, payload["rng"]), payload["train_config"]
