"""Classification recipe: fine-tune a language model as a text classifier (`llmscratch finetune classify`).

Every recipe has this shape: a config dataclass (its fields are the command's flags, `--config` keys and
defaults; `train` holds the Trainer's settings, some of them exposed as flags) and `run(cfg)`, which builds the
model, the data and the Task, hands them to the Trainer, and writes what the task produces (here a classifier
folder, report.json and the final accuracies).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llmscratch.config import check_fields, flat_settings, nested, setting
from llmscratch.train.config import TrainConfig
from llmscratch.utils import UserError, atomic_write_text

TRAIN_FLAGS = ("epochs", "max_steps", "max_seconds", "lr", "weight_decay", "batch_size", "eval_every", "out_dir",
               "device", "seed", "progress")


@dataclass
class ClassifyConfig:
    """What to fine-tune, on which labelled texts, and what trains."""

    model: str | None = setting(None, "base model: registry name (smollm2-135m-instruct, gpt2, ...), preset "
                                "(gpt2-124m: random weights), checkpoint or Hugging Face folder, or .gguf file",
                                required=True)
    data: str = setting("sms-spam", "sms-spam (the book's data and split) or a .csv/.tsv/.jsonl/.json file")
    text_column: str = setting("text", "column (or field) holding the text")
    label_column: str = setting("label", "column (or field) holding the label")
    labels: list[str] | None = setting(None, "comma-separated allowed labels in class order (default: every value "
                                       "found, sorted); any other value is an error")
    balanced: bool | None = setting(None, "--balanced: undersample every class to the smallest one (default for "
                                    "sms-spam); --full: use every row (default for data files)",
                                    switches={"--balanced": True, "--full": False})
    trainable: str = setting("last-block", "what to train: last-block (+ final norm + head, the book's choice), "
                             "last-N (e.g. last-2), all, or lora (adapters + head)")
    lora_rank: int = setting(16, "LoRA rank", ge=1)
    lora_alpha: float = setting(16.0, "LoRA alpha; the update is scaled by alpha/rank", gt=0)
    lora_targets: list[str] | None = setting(None, "comma-separated name patterns of the linear layers that get "
                                             "adapters, e.g. 'attn.*' or 'qkv,ffn.*' (default: every linear layer "
                                             "of the blocks)")
    max_length: int | None = setting(None, "tokens kept per text (its first ones; default: the longest training "
                                     "text)", ge=1)
    resume: bool = setting(False, "continue the run in --out from its newest checkpoint")
    overwrite: bool = setting(False, "replace an earlier run in --out")
    train: TrainConfig = nested(TrainConfig, TRAIN_FLAGS, out_dir="runs/classify", epochs=3, lr=5e-5,
                                schedule="constant", keep_last=1, export_models=False, sample_prompt=None)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.resume and self.overwrite:
            raise UserError("resume and overwrite exclude each other")


OUTPUTS = ("report.json", "classifier.json", "classifier.safetensors")  # the recipe's files in the run folder


def run(cfg: ClassifyConfig, base=None, command: str | None = None) -> dict:
    """Fine-tune a classifier as `cfg` says; write the classifier folder, report.json and loss.png into
    cfg.train.out_dir and return the report. `base`: an already loaded base model (anything with `.model` and
    `.tokenizer`) instead of loading cfg.model. Every user mistake raises UserError before training starts."""
    from llmscratch.model.heads import add_classifier_head, parse_trainable, set_trainable
    from llmscratch.train.tasks.classify import ClassificationTask
    from llmscratch.train.trainer import Trainer, check_run_folder, seed_everything
    from llmscratch.weights.classifier import save_classifier, write_classifier_info

    timer = Timer()
    spec = parse_trainable(cfg.trainable, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    out = Path(cfg.train.out_dir)
    previous = earlier_run(out, cfg)
    check_run_folder(out, cfg.resume, cfg.overwrite, OUTPUTS)  # before anything is loaded or written
    splits, data_desc = load_data(cfg, previous)
    loaded = timer.time("load_model", lambda: base if base is not None else load_base(cfg))
    model, tokenizer = loaded.model, loaded.tokenizer
    datasets, pad_id = timer.time("tokenize", lambda: encode(splits, tokenizer, model, cfg, previous))
    seed_everything(cfg.train.seed)
    add_classifier_head(model, len(data_desc["label_names"]), seed=cfg.train.seed)
    summary = set_trainable(model, spec)
    info = classifier_info(model, cfg, spec, datasets, pad_id, previous)
    if not cfg.resume:
        (out / "classifier.safetensors").unlink(missing_ok=True)
    write_classifier_info(out, info)

    task = ClassificationTask(datasets["train"], datasets["validation"], pad_id, seed=cfg.train.seed)
    train_cfg = dataclasses.replace(cfg.train, extra={"task": "classify", "data": cfg.data,
                                                      "labels": info.label_names, "trainable": spec.label})
    result = Trainer(model, task, train_cfg, tokenizer=tokenizer, tokenizer_ref=info.tokenizer, resume=cfg.resume,
                     overwrite=cfg.overwrite).fit()
    timer.seconds["train"] = result.seconds
    evals = timer.time("evaluate", lambda: final_evaluation(model, task, datasets, cfg))
    save_classifier(model, out, info)
    report = make_report(cfg, command, loaded, summary, data_desc, datasets, evals, result, timer)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


class Timer:
    """Seconds per named stage, and since creation."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def time(self, name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        self.seconds[name] = time.perf_counter() - t0
        return value


def earlier_run(out: Path, cfg: ClassifyConfig):
    """The ClassifierInfo of the run in `out` to resume (None when not resuming); UserError when `out` holds a
    run that is neither resumed nor overwritten."""
    from llmscratch.train.checkpoint import list_checkpoints
    from llmscratch.weights.classifier import CONFIG_FILE, read_classifier_info

    existing = (out / CONFIG_FILE).is_file() or list_checkpoints(out / "checkpoints")
    if existing and not cfg.resume and not cfg.overwrite:
        raise UserError(f"{out} already holds a classifier run; resume=True continues it, overwrite=True starts "
                        "again there, or choose another output folder", params=("resume", "overwrite"))
    return read_classifier_info(out) if cfg.resume and (out / CONFIG_FILE).is_file() else None


def load_data(cfg: ClassifyConfig, previous):
    """(train, validation, test) and their description; a resumed run keeps its classes."""
    from llmscratch.data.classification import load_classification_splits

    def load(labels):
        return load_classification_splits(cfg.data, cfg.text_column, cfg.label_column, cfg.balanced, labels)

    splits, desc = load(cfg.labels)
    names = desc["label_names"]
    if previous is not None and names != previous.label_names:
        if not set(names) <= set(previous.label_names):
            raise UserError(f"{cfg.train.out_dir} was trained with {previous.num_classes} classes "
                            f"{previous.label_names}, the data has {len(names)}: {names}; use another output folder "
                            "or the same labels")
        splits, desc = load(previous.label_names)
    head = checkpoint_classes(Path(cfg.train.out_dir)) if cfg.resume else None
    if head is not None and head != len(desc["label_names"]):
        raise UserError(f"the checkpoint in {Path(cfg.train.out_dir) / 'checkpoints'} has a head for {head} classes, "
                        f"the data has {len(desc['label_names'])} ({desc['label_names']})")
    return splits, desc


def checkpoint_classes(out: Path) -> int | None:
    """The class count of the head in the newest checkpoint of `out` (None when there is none)."""
    from safetensors import safe_open

    from llmscratch.train.checkpoint import list_checkpoints

    found = list_checkpoints(out / "checkpoints")
    if not found or not (found[-1] / "model.safetensors").is_file():
        return None
    with safe_open(str(found[-1] / "model.safetensors"), framework="pt") as f:
        return f.get_slice("head.weight").get_shape()[0] if "head.weight" in f.keys() else None


def load_base(cfg: ClassifyConfig):
    """The base model (with its tokenizer) on the configured device."""
    from llmscratch.utils import pick_device
    from llmscratch.weights import load_model

    loaded = load_model(cfg.model, device=pick_device(cfg.train.device), progress=cfg.train.progress)
    if loaded.tokenizer is None:
        raise UserError(f"the model {cfg.model!r} comes without a tokenizer; give a model folder that has one")
    if loaded.random_weights:
        print(f"warning: {cfg.model!r} is a preset with random weights (no pretrained weights): the classifier "
              "starts from an untrained model", file=sys.stderr)
    return loaded


def encode(splits, tokenizer, model, cfg: ClassifyConfig, previous) -> tuple[dict, int]:
    """The three splits as token-id datasets (cut to max_length: given, the resumed run's, or the longest
    training text) and the pad id."""
    from llmscratch.data.classification import ClassificationDataset, pad_id_of

    context = model.config.context_length
    max_length = cfg.max_length or (previous.max_length if previous else None)
    if max_length is not None and max_length > context:
        raise UserError(f"max_length {max_length} exceeds the model's context length {context}")
    train = ClassificationDataset(splits[0], tokenizer, max_length or context)
    max_length = max_length or train.longest
    datasets = {"train": train, "validation": ClassificationDataset(splits[1], tokenizer, max_length),
                "test": ClassificationDataset(splits[2], tokenizer, max_length)}
    return datasets, pad_id_of(tokenizer)


def classifier_info(model, cfg: ClassifyConfig, spec, datasets: dict, pad_id: int, previous):
    """What classifier.json records; UserError when a resumed run was set up differently."""
    from llmscratch.weights.classifier import ClassifierInfo, base_fingerprint

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    base_ref = model_reference(cfg.model)  # the tokenizer comes with the base model
    info = ClassifierInfo(
        base_model=base_ref, label_names=list(datasets["train"].data.label_names),
        max_length=datasets["validation"].max_length, trainable=spec.to_dict(),
        base_fingerprint=base_fingerprint(model, trainable), pad_id=pad_id, tokenizer=base_ref,
        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
    )
    for key in ("base_model", "trainable", "max_length", "base_fingerprint"):  # the setting a user changed first
        if previous is not None and getattr(previous, key) != getattr(info, key):
            raise UserError(f"cannot resume {cfg.train.out_dir}: its {key} was {getattr(previous, key)!r}, now "
                            f"{getattr(info, key)!r}")
    return info


def final_evaluation(model, task, datasets: dict, cfg: ClassifyConfig) -> dict:
    """Loss and accuracy on every split, with the LoRA adapters folded in (the one evaluation loop)."""
    from llmscratch.model.lora import merge_lora, unmerge_lora
    from llmscratch.train.evaluate import means, task_sums
    from llmscratch.train.tasks.classify import eval_batches

    device = next(model.parameters()).device
    merge_lora(model)  # no extra products per layer
    evals = {}
    for name, ds in datasets.items():
        desc = f"{name} accuracy" if cfg.train.progress else None
        batches = eval_batches(ds, cfg.train.batch_size, task.pad_id)
        evals[name] = means(task_sums(model, task, batches, device, desc=desc, total=len(ds)))
    unmerge_lora(model)
    return evals


def make_report(cfg, command, loaded, summary, data_desc, datasets, evals, result, timer: Timer) -> dict:
    """report.json: the command, settings, model, data, accuracies, training and timings."""
    import torch

    model = loaded.model
    out = Path(cfg.train.out_dir)
    return {
        "command": command,
        "config": flat_settings(cfg),
        "model": {"base": model_reference(cfg.model), "source": getattr(loaded, "source", None),
                  "family": getattr(model.config, "family", None), **summary},
        "data": {**data_desc, "max_length": datasets["validation"].max_length,
                 "longest_train_tokens": datasets["train"].longest},
        "accuracy": {k: v["accuracy"] for k, v in evals.items()},
        "loss": {k: v["loss"] for k, v in evals.items()},
        "train": {"steps": result.steps, "tokens_seen": result.tokens_seen, "best_val_loss": result.best_val_loss,
                  "best_step": result.best_step, "last_train_loss": result.last_train_loss,
                  "stop_reason": result.stop_reason,
                  "resumed_from": str(result.resumed_from) if result.resumed_from else None,
                  "evaluations": result.evals},
        "timings_s": {**timer.seconds, "total": time.perf_counter() - timer.started},
        "device": str(next(model.parameters()).device),
        "torch_threads": torch.get_num_threads(),
        "files": {"classifier": str(out / "classifier.json"), "weights": str(out / "classifier.safetensors"),
                  "plot": str(result.plot) if result.plot else None, "metrics": str(out / "metrics.jsonl")},
    }


def model_reference(spec: str) -> str:
    """How to find the base model again: an existing path made absolute, else the name as given."""
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec
