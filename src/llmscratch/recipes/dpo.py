"""`llmscratch finetune dpo`: preference tuning with Direct Preference Optimization on the one training loop.

The model learns to prefer the chosen answer of each pair over the rejected one, measured against a frozen
reference: the starting model (a second frozen copy, or the same model with its LoRA adapters switched off), or
the reference's log-probabilities computed once before training and stored with the run. See docs/dpo.md.
"""

from __future__ import annotations

import contextlib
import copy
import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llmscratch.utils import UserError, atomic_write_text

REFERENCES = ("live", "precomputed")


def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DPOConfig:
    """Settings of `llmscratch finetune dpo` (each field is a flag: --model, --beta, ...)."""

    model: str = _opt(None, "the starting model (an instruction-tuned one): our model folder (runs/instruct/final), "
                      "registry name (smollm2-135m-instruct), Hugging Face folder or .gguf file", required=True)
    data: str = _opt("instruction-data-preference", "instruction-data-preference (the book's 1,100 pairs, split "
                     "935/55/110 train/validation/test) or a .json/.jsonl file of pairs (split the same way)")
    prompt_field: str | None = _opt(None, "field holding the prompt (default: instruction, else prompt)")
    input_field: str = _opt("input", "optional field with extra input shown below the prompt")
    chosen_field: str = _opt("chosen", "field holding the preferred answer")
    rejected_field: str = _opt("rejected", "field holding the rejected answer")
    prompt_format: str = _opt("alpaca", "prompt format, as in instruction tuning: alpaca, phi3 or chat (the "
                              "model's own chat template)", choices=("alpaca", "phi3", "chat"))
    max_length: int | None = _opt(None, "tokens per sequence (prompt + answer); longer answers are cut, pairs whose "
                                  "prompt leaves no room are skipped (default: the model's context length)")
    beta: float = _opt(0.1, "DPO temperature: how far the policy may move from the reference")
    reduction: str = _opt("mean", "per-sequence log-probability: mean over answer tokens (the book) or sum (the "
                          "DPO paper)", choices=("mean", "sum"))
    reference: str = _opt("live", "live: the reference model runs at every step (a frozen copy, or with LoRA the "
                          "same model with adapters off); precomputed: its log-probs are computed once before "
                          "training and stored in OUT (half the forward passes, no second model)", choices=REFERENCES)
    reference_model: str | None = _opt(None, "a different reference model (default: the starting model itself)")
    trainable: str = _opt("all", "what trains: all, lora (adapters on every linear layer of the blocks) or last-N "
                          "(the last N blocks and the final norm)")
    lora_rank: int = _opt(16, "LoRA rank")
    lora_alpha: float = _opt(16.0, "LoRA alpha (the update is scaled by alpha / rank)")
    lr: float = _opt(5e-6, "AdamW learning rate (constant after warmup)")
    weight_decay: float = _opt(0.01, "AdamW weight decay on matrices")
    warmup_steps: int = _opt(0, "linear warmup steps")
    epochs: int = _opt(1, "passes over the training pairs")
    batch_size: int = _opt(8, "pairs per batch")
    grad_accum: int = _opt(1, "batches per optimizer step")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps")
    max_seconds: float | None = _opt(None, "stop (evaluate, save) after this many seconds of training")
    eval_every: int = _opt(25, "steps between evaluations (0: only at the end)")
    eval_batches: int | None = _opt(5, "batches per evaluation of validation and train metrics (the book: 5)")
    out: str = _opt("runs/dpo", "output folder")
    resume: bool = _opt(False, "continue the run in OUT from its newest checkpoint")
    overwrite: bool = _opt(False, "replace an earlier run in OUT")
    device: str = _opt("auto", "cpu, cuda, mps or auto")
    seed: int = _opt(123, "seed of the data order (and LoRA initialisation)")
    progress: bool = _opt(True, "progress bars")

    def validate(self) -> None:
        """UserError for settings that cannot work, before anything is loaded."""
        checks = [
            (self.beta > 0, f"beta must be > 0, got {self.beta}"),
            (self.reduction in ("mean", "sum"), f"reduction must be mean or sum, got {self.reduction!r}"),
            (self.reference in REFERENCES, f"reference must be live or precomputed, got {self.reference!r}"),
            (self.max_length is None or self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (not (self.resume and self.overwrite), "resume and overwrite exclude each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)


# ---------------------------------------------------------------------------------------------------------
# What trains
# ---------------------------------------------------------------------------------------------------------


def set_trainable(model, trainable: str, lora_rank: int, lora_alpha: float) -> dict:
    """Freeze the model, then unfreeze what `trainable` names: all | lora | last-N. A summary dict."""
    import re

    from llmscratch.model.lora import apply_lora

    spec = trainable.strip().lower()
    model.requires_grad_(spec == "all")
    if spec == "lora":
        apply_lora(model, lora_rank, lora_alpha)
    elif (m := re.fullmatch(r"last-(\d+)", spec)) and int(m.group(1)) >= 1:
        n = int(m.group(1))
        if n > len(model.blocks):
            raise UserError(f"trainable last-{n}: the model has only {len(model.blocks)} blocks")
        for block in list(model.blocks)[-n:]:
            block.requires_grad_(True)
        model.final_norm.requires_grad_(True)
    elif spec != "all":
        raise UserError(f"trainable must be all, lora or last-N (e.g. last-2), got {trainable!r}")
    return {"trainable": spec, "trainable_params": model.num_params(trainable_only=True),
            "total_params": model.num_params()}


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def load_pair_splits(cfg: DPOConfig, tokenizer, chat_template: str | None, context_length: int, echo=print):
    """{"train", "val", "test"}: PreferenceDatasets of the book's split, encoded as instruction tuning encodes.

    Skipped pairs are reported (one line per split); an empty train or validation split is a UserError.
    """
    from llmscratch.data.instruction import check_format, encode_example, end_id_of
    from llmscratch.data.preference import (
        PreferenceDataset,
        PreferenceFields,
        book_split,
        load_preference_entries,
    )

    check_format(cfg.prompt_format, chat_template)
    max_length = min(cfg.max_length or context_length, context_length)
    fields = PreferenceFields(cfg.prompt_field, cfg.input_field, cfg.chosen_field, cfg.rejected_field)
    entries = load_preference_entries(cfg.data, fields)
    train, val, test = book_split(entries)

    def encode(entry):
        return encode_example(entry, cfg.prompt_format, tokenizer, chat_template)

    splits = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        ds = PreferenceDataset(part, encode, max_length, end_id_of(tokenizer))
        if ds.skipped.total:
            echo(f"{name}: {ds.skipped.describe()}")
        if len(ds) == 0 and name != "test":
            raise UserError(f"{cfg.data}: no usable pairs in the {name} split ({len(part)} read, "
                            f"{ds.skipped.describe()})")
        splits[name] = ds
    return splits


# ---------------------------------------------------------------------------------------------------------
# The reference
# ---------------------------------------------------------------------------------------------------------


def build_reference(cfg: DPOConfig, model, device):
    """The live reference, chosen before anything trains: a frozen copy of `model`, the policy with adapters off
    (LoRA), or `cfg.reference_model` (same vocabulary required). Call before `set_trainable`."""
    from llmscratch.train.tasks.dpo import FrozenReference, PolicyReference, check_same_vocabulary

    if cfg.reference_model:
        from llmscratch.weights import load_model

        other = load_model(cfg.reference_model, device=device).model
        check_same_vocabulary(model, other)
        return FrozenReference(other)
    if cfg.trainable.strip().lower() == "lora":
        return PolicyReference()
    if cfg.reference == "precomputed":
        return PolicyReference()  # the policy before its first update: no copy
    return FrozenReference(copy.deepcopy(model))


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA (as the training loop), nothing elsewhere."""
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


@torch.no_grad()
def evaluate_pairs(model, task, split: str, batch_size: int, device, max_batches: int | None = None,
                   desc: str | None = None) -> dict:
    """Mean DPO loss, chosen/rejected rewards, margin and reward accuracy of `model` over a split (eval mode)."""
    from llmscratch.train.tasks import move_to

    was_training = model.training
    model.eval()
    sums: dict[str, list[float]] = {}
    autocast = autocast_for(device)
    from tqdm.auto import tqdm

    for i, batch in enumerate(tqdm(task.split_batches(split, batch_size), desc=desc, disable=desc is None,
                                   leave=False)):
        if max_batches is not None and i >= max_batches:
            break
        batch = move_to(batch, device)
        with autocast():
            loss, metrics = task.evaluate_batch(model, batch)
        n = int(batch["chosen"].shape[0])
        metrics["loss"] = (float(loss) * n, n)
        for k, (s, c) in metrics.items():
            acc = sums.setdefault(k, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + s, acc[1] + c
    model.train(was_training)
    return {k: s / c for k, (s, c) in sums.items() if c} | {"pairs": int(sums.get("loss", [0, 0])[1])}


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def train_config(cfg: DPOConfig):
    """The training loop's settings for this run."""
    from llmscratch.train.config import TrainConfig

    return TrainConfig(
        out_dir=cfg.out, epochs=cfg.epochs, max_steps=cfg.max_steps, max_seconds=cfg.max_seconds,
        batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, lr=cfg.lr, schedule="constant",
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, eval_every=cfg.eval_every,
        eval_batches=cfg.eval_batches, export_models=False, seed=cfg.seed, device=cfg.device,
        sample_tokens=0, progress=cfg.progress, extra={"recipe": "dpo", **asdict(cfg)},
    )


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def run_dpo(cfg: DPOConfig, command: str | None = None, echo=print, loaded=None) -> dict:
    """Load, check the data, set up the reference, train, evaluate validation and test pairs, write OUT/final
    (LoRA merged), OUT/report.json and the plot. Returns the report.

    `loaded`: the starting model already loaded (a `LoadedModel`: model, tokenizer, chat_template), instead of
    loading `cfg.model`."""
    from llmscratch.train.loop import seed_everything, train
    from llmscratch.train.tasks.dpo import DPOTask
    from llmscratch.utils import pick_device
    from llmscratch.weights import load_model

    cfg.validate()
    started = time.perf_counter()
    device = pick_device(cfg.device)
    out = Path(cfg.out)
    if (out / "checkpoints").exists() and not (cfg.resume or cfg.overwrite):
        raise UserError(f"{out} already holds a run; pass resume to continue it, overwrite to start again, or "
                        "choose another out folder")
    seed_everything(cfg.seed)
    loaded = loaded or load_model(cfg.model, device=device)
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    if tokenizer is None:
        raise UserError(f"{cfg.model} has no tokenizer; DPO needs one to encode the pairs")
    splits = load_pair_splits(cfg, tokenizer, loaded.chat_template, model.config.context_length, echo)
    echo(f"pairs: {len(splits['train'])} train, {len(splits['val'])} validation, {len(splits['test'])} test")
    reference = build_reference(cfg, model, device)
    summary = set_trainable(model, cfg.trainable, cfg.lora_rank, cfg.lora_alpha)
    from llmscratch.data.classification import pad_id_of

    live = reference if cfg.reference == "live" else None
    task = DPOTask(splits, pad_id_of(tokenizer), cfg.beta, cfg.reduction, live, seed=cfg.seed)
    timings = {"load": time.perf_counter() - started}
    if cfg.reference == "precomputed":
        t0 = time.perf_counter()
        key = json.dumps({"model": cfg.model, "reference_model": cfg.reference_model, "device": device.type})
        how = task.precompute_reference(model, cfg.batch_size, device, out / "reference_logprobs.safetensors",
                                        key, autocast_for(device), cfg.progress, reference)
        del reference
        timings["reference"] = time.perf_counter() - t0
        echo(f"reference log-probs {how}: {out / 'reference_logprobs.safetensors'} "
             f"({timings['reference']:.1f} s)")
    before = None
    if not cfg.resume and len(splits["test"]):  # the policy is the reference: loss log 2, rewards 0 (a check)
        before = evaluate_pairs(model, task, "test", cfg.batch_size, device,
                                desc="evaluating test (before)" if cfg.progress else None)
    result = train(model, task, train_config(cfg), tokenizer=tokenizer, resume=cfg.resume, overwrite=cfg.overwrite)
    timings["train"] = result.seconds
    after = {split: evaluate_pairs(model, task, split, cfg.batch_size, device,
                                   desc=f"evaluating {split}" if cfg.progress else None)
             for split in ("val", "test") if len(splits[split])}
    final = export_final(model, out / "final", tokenizer, loaded.chat_template, result.steps)
    timings["total"] = time.perf_counter() - started
    plot = plot_dpo(out / "metrics.jsonl", out / "dpo.png", f"DPO (beta {cfg.beta}): {cfg.model}")
    report = {
        "command": command, "config": asdict(cfg), "model": {"start": cfg.model, **summary},
        "data": {name: {"pairs": len(ds), "skipped": ds.skipped.total} for name, ds in splits.items()},
        "reference": cfg.reference if cfg.reference == "precomputed" else type(live).__name__,
        "steps": result.steps, "stop_reason": result.stop_reason,
        "before": {"test": before} if before else None, "after": after, "timings_s": timings,
        "seconds_per_step": result.seconds / max(result.steps, 1), "peak_memory_mb": peak_memory_mb(device),
        "final_model": str(final), "plot": str(plot) if plot else None,
        "metrics": str(result.metrics_path) if result.metrics_path else None,
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


DPO_PANELS = [
    ("DPO loss", [("loss", "train (per step)"), ("train_loss_eval", "train (eval)"), ("val_loss", "validation")]),
    ("reward margin (chosen - rejected)", [("train_margin", "train"), ("margin", "validation")]),
    ("reward accuracy", [("train_accuracy", "train"), ("accuracy", "validation")]),
]


def plot_dpo(metrics_path: Path, out_png: Path, title: str) -> Path | None:
    """dpo.png: loss, reward margin and reward accuracy on train and validation against steps."""
    from llmscratch.train.plots import plot_panels, read_metrics

    return plot_panels(read_metrics(metrics_path), out_png, DPO_PANELS, title)


def export_final(model, folder: Path, tokenizer, chat_template: str | None, steps: int) -> Path:
    """The trained model as a model folder (`generate --model FOLDER`); LoRA adapters are merged into it."""
    from llmscratch.model.lora import lora_layers, merge_lora
    from llmscratch.train.loop import export_model

    if lora_layers(model):
        merge_lora(model)
        model = _without_lora(model)
    export_model(model, folder, tokenizer, info={"step": steps, "recipe": "dpo"})
    if chat_template:
        atomic_write_text(folder / "chat_template.jinja", chat_template)
    return folder


def _without_lora(model):
    """The model with each (merged) LoRA layer replaced by a plain linear layer holding its weights."""
    from torch import nn

    from llmscratch.model.lora import lora_layers

    for name, layer in lora_layers(model).items():
        plain = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                          device=layer.weight.device, dtype=layer.weight.dtype)
        plain.weight, plain.bias = layer.weight, layer.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    return model


def format_report(report: dict) -> str:
    """A few lines for the console: what trained, the metrics before and after, timings, where files are."""
    m, t = report["model"], report["timings_s"]
    lines = [f"model {m['start']}: {m['trainable']}, {m['trainable_params']:,} of {m['total_params']:,} parameters "
             f"trained; reference: {report['reference']}"]
    rows = [("test (before)", (report.get("before") or {}).get("test"))]
    rows += [(f"{'validation' if k == 'val' else k} (after)", v) for k, v in report["after"].items()]
    beta = report["config"]["beta"]
    for name, r in rows:
        if r:
            lines.append(f"{name + ':':<20} reward accuracy {r['accuracy'] * 100:6.2f}%  margin {r['margin']:7.4f} "
                         f"({r['margin'] / beta:.3f} without beta, the book's unit)  chosen {r['chosen_reward']:7.4f}  "
                         f"rejected {r['rejected_reward']:7.4f}  loss {r['loss']:.4f}  ({r['pairs']} pairs)")
    lines.append(f"training: {report['steps']} steps in {t['train']:.1f} s ({report['seconds_per_step']:.2f} s/step"
                 f"{', stopped: ' + report['stop_reason'] if report['stop_reason'] else ''}); peak memory "
                 f"{report['peak_memory_mb']:,.0f} MB; total {t['total']:.1f} s")
    lines.append(f"final model {report['final_model']}; report.json, dpo.png (loss, margin, accuracy), "
                 f"metrics.jsonl in {Path(report['final_model']).parent}")
    return "\n".join(lines)
