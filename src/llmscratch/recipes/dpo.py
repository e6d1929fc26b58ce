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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llmscratch.config import check_fields, flat_settings, nested, setting
from llmscratch.train.config import TrainConfig
from llmscratch.utils import UserError, atomic_write_text, plural

if TYPE_CHECKING:
    import torch

REFERENCES = ("live", "precomputed")
TRAIN_FLAGS = ("epochs", "max_steps", "max_seconds", "lr", "weight_decay", "warmup_steps", "batch_size", "grad_accum",
               "eval_every", "eval_batches", "out_dir", "device", "seed", "progress")


@dataclass
class DPOConfig:
    """What to preference-tune, on which pairs, against which reference, and what trains."""

    model: str | None = setting(None, "the starting model (an instruction-tuned one): our model folder "
                                "(runs/instruct/final), registry name (smollm2-135m-instruct), Hugging Face folder or "
                                ".gguf file", required=True)
    data: str = setting("instruction-data-preference", "instruction-data-preference (the book's 1,100 pairs, split "
                        "935/55/110 train/validation/test) or a .json/.jsonl file of pairs (split the same way)")
    prompt_field: str | None = setting(None, "field holding the prompt (default: instruction, else prompt)")
    input_field: str = setting("input", "optional field with extra input shown below the prompt")
    chosen_field: str = setting("chosen", "field holding the preferred answer")
    rejected_field: str = setting("rejected", "field holding the rejected answer")
    prompt_format: str | None = setting(None, "prompt format, as in instruction tuning: alpaca, phi3 or chat (the "
                                        "model's own chat template) (default: the one the model was tuned in, "
                                        "recorded in its folder; else chat for a model with a chat template; else "
                                        "alpaca)", choices=("alpaca", "phi3", "chat"))
    max_length: int | None = setting(None, "tokens per sequence (prompt + answer); longer answers are cut, pairs "
                                     "whose prompt leaves no room are skipped (default: the context length)", ge=2)
    beta: float = setting(0.1, "DPO temperature: how far the policy may move from the reference", gt=0)
    reduction: str = setting("mean", "per-sequence log-probability: the mean over answer tokens (the book) or the "
                             "sum (the DPO paper)", choices=("mean", "sum"))
    sft_weight: float = setting(0.0, "weight of the chosen answers' negative log-likelihood added to the DPO loss "
                                "(RPO): keeps the chosen answers likely while the rejected ones fall, against the "
                                "collapse of plain DPO (see chosen_nll); 0: plain DPO", ge=0)
    reference: str = setting("live", "live: the reference runs at every step (a frozen copy, or with LoRA the same "
                             "model with adapters off); precomputed: its log-probs are computed once before training "
                             "and stored in OUT (half the forward passes, no second model)", choices=REFERENCES)
    reference_model: str | None = setting(None, "another reference model (default: the starting model itself)")
    trainable: str = setting("all", "what trains: all, lora (adapters on every linear layer of the blocks) or "
                             "last-N (the last N blocks and the final norm)")
    lora_rank: int = setting(16, "LoRA rank", ge=1)
    lora_alpha: float = setting(16.0, "LoRA alpha; the update is scaled by alpha/rank", gt=0)
    train_metrics_batches: int = setting(5, "training batches scored at each evaluation for the train loss, rewards, "
                                         "margin and accuracy (0: none)", ge=0)
    resume: bool = setting(False, "continue the run in --out from its newest checkpoint")
    overwrite: bool = setting(False, "replace an earlier run in --out")
    train: TrainConfig = nested(TrainConfig, TRAIN_FLAGS, out_dir="runs/dpo", epochs=1, lr=5e-6, batch_size=8,
                                schedule="constant", weight_decay=0.0, eval_every=25, eval_batches=5, keep_last=1,
                                export_models=False, sample_prompt=None)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.resume and self.overwrite:
            raise UserError("resume=True and overwrite=True exclude each other", params=("resume", "overwrite"))


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------


def load_pair_splits(cfg: DPOConfig, fmt: str, tokenizer, chat_template: str | None, context_length: int,
                     echo=print):
    """{"train", "val", "test"}: PreferenceDatasets of the book's split, encoded in prompt format `fmt` as
    instruction tuning encodes.

    Skipped pairs are reported (one line per split); an empty train or validation split is a UserError.
    """
    from llmscratch.data.instruction import SPLIT_RULE, book_split, check_format, encode_example, end_id_of
    from llmscratch.data.preference import PreferenceDataset, PreferenceFields, load_preference_entries

    check_format(fmt, chat_template)
    max_length = min(cfg.max_length or context_length, context_length)
    fields = PreferenceFields(cfg.prompt_field, cfg.input_field, cfg.chosen_field, cfg.rejected_field)
    entries = load_preference_entries(cfg.data, fields)
    train, test, val = book_split(entries)

    def encode(entry):
        return encode_example(entry, fmt, tokenizer, chat_template)

    splits = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        ds = PreferenceDataset(part, encode, max_length, end_id_of(tokenizer))
        room = f"; max_length is {max_length} tokens" if ds.skipped.no_room else ""
        if ds.skipped.total:
            echo(f"{name}: {ds.skipped.describe()}{room}")
        if len(ds) == 0 and name != "test":
            raise UserError(f"{cfg.data}: no usable pairs in the {name} split ({len(part)} read, "
                            f"{ds.skipped.describe()}{room}; the book's split, {SPLIT_RULE})", params="max_length")
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
    import torch  # lazily: the CLI builds this command's flags without loading torch

    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def evaluate_pairs(model, task, split: str, batch_size: int, device, desc: str | None = None
                   ) -> tuple[dict, list[dict]]:
    """Mean DPO loss, chosen/rejected rewards, margin, reward accuracy and chosen NLL of `model` over a split (the
    one evaluation loop: eval mode, no gradients) with the number of pairs; and each pair's entry with its rewards
    and margin, in file order."""
    from llmscratch.train.evaluate import eval_outputs, means, merge_sums

    def outputs(m, batch):
        return batch["index"], task.outputs(m, batch)

    sums, per_pair, entries = [], [], task.splits[split].entries
    for rows, (index, out) in eval_outputs(model, task.split_batches(split, batch_size), outputs, device,
                                           autocast=autocast_for(device), desc=desc, total=len(entries)):
        sums.append({"loss": (float(out.loss.sum()), rows), **out.metrics()})  # the training loop's figures
        for i, c, r in zip(index.tolist(), out.chosen_rewards.tolist(), out.rejected_rewards.tolist()):
            per_pair.append({**entries[i], "chosen_reward": c, "rejected_reward": r, "margin": c - r})
    merged = merge_sums(sums)
    return {**means(merged), "pairs": int(merged["loss"][1])}, per_pair


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process so far: CUDA allocations on a GPU, else the peak resident set size."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


OUTPUTS = ("report.json", "dpo.png", "reference_logprobs.safetensors", "test_pairs.jsonl")  # the recipe's files


def run(cfg: DPOConfig, command: str | None = None, echo=print, base=None) -> dict:
    """Load, check the data, set up the reference, train, evaluate validation and test pairs, write OUT/final
    (LoRA merged), OUT/report.json, OUT/dpo.png and OUT/test_pairs.jsonl (each test pair with its rewards after
    training). Returns the report. `base`: the starting model already
    loaded (anything with `.model`, `.tokenizer`, `.chat_template`) instead of loading cfg.model."""
    from llmscratch.data.classification import pad_id_of
    from llmscratch.evaluate.responses import default_prompt_format
    from llmscratch.model.heads import apply_trainable
    from llmscratch.recipes.instruct import save_tuned
    from llmscratch.train.tasks.dpo import DPOTask
    from llmscratch.train.trainer import check_run_folder, seed_everything

    started = time.perf_counter()
    out = Path(cfg.train.out_dir)
    check_run_folder(out, cfg.resume, cfg.overwrite, OUTPUTS)  # before the models load
    loaded = base or load_start(cfg)
    device = next(loaded.model.parameters()).device
    model, tokenizer = loaded.model, loaded.tokenizer
    fmt = cfg.prompt_format or default_prompt_format(cfg.model, loaded.chat_template)[0]
    splits = load_pair_splits(cfg, fmt, tokenizer, loaded.chat_template, model.config.context_length, echo)
    echo(f"pairs: {len(splits['train'])} train, {len(splits['val'])} validation, {len(splits['test'])} test")
    seed_everything(cfg.train.seed)
    reference = build_reference(cfg, model, device)
    summary = apply_trainable(model, cfg.trainable, cfg.lora_rank, cfg.lora_alpha, train_head=False)
    task = DPOTask(splits, pad_id_of(tokenizer), cfg.beta, cfg.reduction,
                   reference if cfg.reference == "live" else None, seed=cfg.train.seed, sft_weight=cfg.sft_weight)
    timings = {"load": time.perf_counter() - started}
    if cfg.reference == "precomputed":
        timings["reference"] = precompute(cfg, task, model, reference, device, echo)
        del reference
    before = None
    if not cfg.resume and len(splits["test"]):  # the policy is the reference: loss log 2, rewards 0 (a check)
        before = evaluate_pairs(model, task, "test", cfg.train.batch_size, device,
                                "test pairs (before)" if cfg.train.progress else None)[0]
    result = fit(cfg, model, task, tokenizer)
    timings["train"] = result.seconds
    after, per_pair = {}, {}
    for split in ("val", "test"):
        if len(splits[split]):
            after[split], per_pair[split] = evaluate_pairs(model, task, split, cfg.train.batch_size, device,
                                                           f"{split} pairs" if cfg.train.progress else None)
    test_pairs = out / "test_pairs.jsonl"
    if per_pair.get("test"):
        atomic_write_text(test_pairs, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in per_pair["test"]))
    else:  # no test split: no file, not an earlier run's
        test_pairs.unlink(missing_ok=True)
        test_pairs = None
    final = save_tuned(model, tokenizer, loaded.chat_template, out / "final",
                       {"prompt_format": fmt, "base_model": cfg.model, "tuned": "dpo", "data": cfg.data,
                        "beta": cfg.beta, "steps": result.steps})
    plot = plot_dpo(out / "metrics.jsonl", out / "dpo.png", f"DPO (beta {cfg.beta}): {cfg.model}")
    timings["total"] = time.perf_counter() - started
    if cfg.reference != "live":
        reference_way = "precomputed tables"
    elif cfg.reference_model:
        reference_way = f"the model {cfg.reference_model}"
    elif type(reference).__name__ == "FrozenReference":
        reference_way = "a frozen copy of the model"
    else:
        reference_way = "the policy with its adapters off"
    report = {
        "command": command, "config": flat_settings(cfg), "model": {"start": cfg.model, **summary},
        "data": {name: {"pairs": len(ds), "skipped": ds.skipped.total} for name, ds in splits.items()},
        "prompt_format": fmt, "reference": cfg.reference,
        "reference_way": reference_way,
        "steps": result.steps, "stop_reason": result.stop_reason,
        "before": {"test": before} if before else None, "after": after, "timings_s": timings,
        "seconds_per_step": result.seconds / max(result.steps, 1), "peak_memory_mb": peak_memory_mb(device),
        "device": str(device), "final_model": str(final), "plot": str(plot) if plot else None,
        "test_pairs": str(test_pairs) if test_pairs else None,
        "test_pairs_wrong": sum(p["margin"] <= 0 for p in per_pair.get("test", [])),
        "evaluations": result.evals,
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def load_start(cfg: DPOConfig):
    """The starting model with its tokenizer, on the configured device."""
    from llmscratch.utils import pick_device
    from llmscratch.weights import load_model

    loaded = load_model(cfg.model, device=pick_device(cfg.train.device))
    if loaded.tokenizer is None:
        raise UserError(f"the model {cfg.model!r} comes without a tokenizer; DPO needs one to encode the pairs")
    return loaded


def precompute(cfg: DPOConfig, task, model, reference, device, echo) -> float:
    """The reference log-probs of every pair, computed once (or read back on resume): their seconds."""
    t0 = time.perf_counter()
    path = Path(cfg.train.out_dir) / "reference_logprobs.safetensors"
    key = json.dumps({"model": cfg.model, "reference_model": cfg.reference_model, "device": device.type,
                      "dtype": str(next(model.parameters()).dtype)})
    how = task.precompute_reference(model, cfg.train.batch_size, device, path, key, autocast_for(device),
                                    cfg.train.progress, reference)
    seconds = time.perf_counter() - t0
    echo(f"reference log-probs {how}: {path} ({seconds:.1f} s)")
    return seconds


def fit(cfg: DPOConfig, model, task, tokenizer):
    """Train on the Trainer, with the train-split metrics added to every evaluation."""
    import dataclasses

    from llmscratch.train.callbacks import TrainMetrics
    from llmscratch.train.trainer import Trainer

    train_cfg = dataclasses.replace(cfg.train, extra={"task": "dpo", "data": cfg.data, "beta": cfg.beta,
                                                      "sft_weight": cfg.sft_weight, "reference": cfg.reference,
                                                      "trainable": cfg.trainable})
    trainer = Trainer(model, task, train_cfg, tokenizer=tokenizer, resume=cfg.resume, overwrite=cfg.overwrite)
    if cfg.train_metrics_batches:
        trainer.callbacks.insert(0, TrainMetrics(cfg.train_metrics_batches))  # before MetricsLog writes the record
    return trainer.fit()


DPO_PANELS = [
    ("DPO loss", [("loss", "train (per step)"), ("eval_train_loss", "train (eval)"), ("val_loss", "validation")]),
    ("reward margin (chosen - rejected)", [("train_margin", "train"), ("margin", "validation")]),
    ("reward accuracy", [("train_accuracy", "train"), ("accuracy", "validation")]),
]


def plot_dpo(metrics_path: Path, out_png: Path, title: str) -> Path | None:
    """dpo.png: loss, reward margin and reward accuracy on train and validation against steps."""
    from llmscratch.train.plots import plot_panels, read_metrics

    return plot_panels(read_metrics(metrics_path), out_png, DPO_PANELS, title)


def format_report(report: dict) -> str:
    """A few lines for the console: what trained, the metrics before and after, timings, where files are."""
    m, t = report["model"], report["timings_s"]
    lines = [f"model {m['start']}: {m['trainable']}, {m['trainable_params']:,} of {m['total_params']:,} parameters "
             f"trained; reference: {report['reference']} ({report['reference_way']})"]
    rows = [("test (before)", (report.get("before") or {}).get("test"))]
    rows += [(f"{'validation' if k == 'val' else k} (after)", v) for k, v in report["after"].items()]
    beta = report["config"]["beta"]
    for name, r in rows:
        if r:
            lines.append(f"{name + ':':<20} reward accuracy {r['accuracy'] * 100:6.2f}%  margin {r['margin']:7.4f} "
                         f"({r['margin'] / beta:.3f} without beta, the book's unit)  chosen {r['chosen_reward']:7.4f}  "
                         f"rejected {r['rejected_reward']:7.4f}  loss {r['loss']:.4f}"
                         + (f"  chosen NLL {r['chosen_nll']:.3f}" if "chosen_nll" in r else "")
                         + f"  ({r['pairs']} pairs)")
    lines.append(f"training: {plural(report['steps'], 'step')} in {t['train']:.1f} s "
                 f"({report['seconds_per_step']:.2f} s/step"
                 f"{', stopped: ' + report['stop_reason'] if report['stop_reason'] else ''}); peak memory "
                 f"{report['peak_memory_mb']:,.0f} MB; total {t['total']:.1f} s")
    if report.get("test_pairs"):
        lines.append(f"test pairs still wrong (rejected reward >= chosen): {report['test_pairs_wrong']}; each pair's "
                     f"rewards: {report['test_pairs']}")
    lines.append(f"final model {report['final_model']}; report.json, dpo.png (loss, margin, accuracy), "
                 f"metrics.jsonl in {Path(report['final_model']).parent}")
    return "\n".join(lines)
