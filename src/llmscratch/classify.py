"""Text classification with any of our language models: a class head, what to train, fine-tuning, prediction.

- `add_classifier_head(model, num_classes)` replaces the vocabulary head by a small linear layer (untied).
- `set_trainable(model, spec)` freezes all but: the last N blocks + final norm + head, everything, or LoRA
  adapters + head.
- `finetune_classifier(FinetuneConfig)` runs the shared training loop with `ClassificationTask` and writes a
  classifier folder (see `save_classifier`), a JSON report and plots.
- `load_classifier(folder)` -> `Classifier` with `predict(texts)`.

A classifier folder holds `classifier.json` (base model reference, labels, max length, what was trained) and
`classifier.safetensors` with only the tensors that differ from the base model (the trainable ones). Loading
rebuilds the base model through `llmscratch.weights.load_model`, checks that its frozen weights are the ones
trained on (a fingerprint), then puts the trained tensors in.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmscratch.model.lora import DEFAULT_TARGETS, apply_lora, merge_lora, name_matches, unmerge_lora
from llmscratch.utils import UserError, atomic_path, atomic_write_text

CLASSIFIER_FORMAT = "llmscratch-classifier"
CLASSIFIER_VERSION = 1
CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "classifier.safetensors"
TRAINABLE_HELP = "last-block | last-N (e.g. last-2) | all | lora"


# ---------------------------------------------------------------------------------------------------------
# The head and what is trained
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainableSpec:
    """What fine-tuning updates. mode "blocks": the last `n_blocks` blocks + final norm + head; "all"; "lora":
    LoRA adapters (rank, alpha, on the linear layers matching `lora_targets`) + head."""

    mode: str = "blocks"
    n_blocks: int = 1
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = DEFAULT_TARGETS

    def to_dict(self) -> dict:
        return {**asdict(self), "lora_targets": list(self.lora_targets)}

    @property
    def label(self) -> str:
        if self.mode == "blocks":
            return "last-block" if self.n_blocks == 1 else f"last-{self.n_blocks}"
        return self.mode


def parse_trainable(
    text: str, lora_rank: int = 16, lora_alpha: float = 16.0, lora_targets: Sequence[str] | None = None
) -> TrainableSpec:
    """The spec of a `--trainable` value: last-block, last-N, all or lora."""
    text = text.strip().lower()
    targets = tuple(lora_targets) if lora_targets else DEFAULT_TARGETS
    if lora_rank < 1:
        raise UserError(f"--lora-rank must be >= 1, got {lora_rank}")
    if lora_alpha <= 0:
        raise UserError(f"--lora-alpha must be > 0, got {lora_alpha}")
    if text in ("last-block", "last-1"):
        return TrainableSpec("blocks", 1)
    if text == "all":
        return TrainableSpec("all", 0)
    if text == "lora":
        return TrainableSpec("lora", 0, lora_rank, float(lora_alpha), targets)
    m = re.fullmatch(r"last-(\d+)", text)
    if m and int(m.group(1)) >= 1:
        return TrainableSpec("blocks", int(m.group(1)))
    raise UserError(f"--trainable must be {TRAINABLE_HELP}, got {text!r}")


def add_classifier_head(model: nn.Module, num_classes: int, seed: int | None = None) -> nn.Module:
    """Replace `model.head` (emb_dim -> vocab) by a fresh nn.Linear(emb_dim, num_classes) with bias, in place.

    The new head is untied from the token embedding; it sits on the model's device and dtype.
    """
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, got {num_classes}")
    old = model.head
    if seed is not None:
        torch.manual_seed(seed)
    model.head = nn.Linear(old.in_features, num_classes, bias=True).to(old.weight.device, old.weight.dtype)
    return model


def set_trainable(model: nn.Module, spec: TrainableSpec) -> dict:
    """Freeze the model, then unfreeze what `spec` names (applying LoRA for mode "lora").

    Returns {"trainable": label, "trainable_params", "total_params", "lora_layers"}.
    """
    blocks = model.blocks
    model.requires_grad_(spec.mode == "all")
    wrapped: list[str] = []
    if spec.mode == "blocks":
        if spec.n_blocks > len(blocks):
            raise UserError(f"--trainable last-{spec.n_blocks}: the model has only {len(blocks)} blocks")
        for block in list(blocks)[-spec.n_blocks :]:
            block.requires_grad_(True)
        model.final_norm.requires_grad_(True)
    elif spec.mode == "lora":
        if name_matches("head", spec.lora_targets):
            raise UserError("the classifier head is trained in full; leave it out of --lora-targets")
        wrapped = apply_lora(model, spec.lora_rank, spec.lora_alpha, list(spec.lora_targets))
    elif spec.mode != "all":
        raise UserError(f"unknown trainable mode {spec.mode!r}")
    model.head.requires_grad_(True)
    return {
        "trainable": spec.label,
        "trainable_params": model.num_params(trainable_only=True),
        "total_params": model.num_params(),
        "lora_layers": len(wrapped),
    }


def build_classifier(model: nn.Module, num_classes: int, spec: TrainableSpec, seed: int | None = None) -> dict:
    """`add_classifier_head` then `set_trainable`; returns the parameter summary."""
    add_classifier_head(model, num_classes, seed=seed)
    return set_trainable(model, spec)


# ---------------------------------------------------------------------------------------------------------
# Classifier folders
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ClassifierInfo:
    """What `classifier.json` records: enough to rebuild the classifier from its base model."""

    base_model: str  # load_model spec: registry name, preset, or absolute path
    label_names: list[str]
    max_length: int
    trainable: dict  # asdict(TrainableSpec)
    base_fingerprint: str
    pad_id: int
    tokenizer: str  # where the tokenizer comes from (the base model's)
    dtype: str = "float32"
    format: str = CLASSIFIER_FORMAT
    version: int = CLASSIFIER_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def spec(self) -> TrainableSpec:
        d = dict(self.trainable)
        d["lora_targets"] = tuple(d.get("lora_targets", DEFAULT_TARGETS))
        return TrainableSpec(**d)


def base_fingerprint(model: nn.Module, exclude: Sequence[str]) -> str:
    """A sha256 over names, shapes and an evenly spaced sample of the values of every parameter not in `exclude`.

    Cheap (a few thousand values per tensor) and enough to tell one base model's weights from another's.
    """
    skip = set(exclude)
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name in skip or name.endswith((".lora_A", ".lora_B")):
            continue
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].to("cpu", torch.float32)
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that fine-tuning changes (those with requires_grad), as contiguous CPU tensors."""
    return {n: p.detach().to("cpu").contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_classifier(model: nn.Module, folder: str | Path, info: ClassifierInfo) -> Path:
    """Write `classifier.json` and `classifier.safetensors` (the trainable tensors) into `folder`, atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(trained_state(model), str(tmp), metadata={"format": CLASSIFIER_FORMAT})
    atomic_write_text(folder / CONFIG_FILE, json.dumps(asdict(info), indent=2) + "\n")
    return folder


def read_classifier_info(folder: str | Path) -> ClassifierInfo:
    """The `classifier.json` of a classifier folder (UserError when absent or not ours)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{folder} is not a classifier folder: no {CONFIG_FILE} (train one with llmscratch finetune "
                        "classify)")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if d.get("format") != CLASSIFIER_FORMAT:
        raise UserError(f"{path} is not an llmscratch classifier (format {d.get('format')!r})")
    if d.get("version") != CLASSIFIER_VERSION:
        raise UserError(f"{path} has classifier format version {d.get('version')}, this llmscratch reads "
                        f"{CLASSIFIER_VERSION}")
    try:
        info = ClassifierInfo(**d)
        info.spec  # noqa: B018 (checks the "trainable" entry)
    except TypeError as e:
        raise UserError(f"{path} is damaged: {e}") from None
    if not isinstance(getattr(torch, str(info.dtype), None), torch.dtype):
        raise UserError(f"{path}: unknown dtype {info.dtype!r}")
    return info


def load_base(spec: str, device=None, dtype: torch.dtype | None = None):
    """`llmscratch.weights.load_model(spec)` (imported here: it pulls in the weight loaders)."""
    from llmscratch.weights import load_model

    return load_model(spec, device=device, dtype=dtype)


def restore_trained(model: nn.Module, folder: str | Path, info: ClassifierInfo) -> None:
    """Put the tensors of `classifier.safetensors` into a model built as `info` says (head + trainable set)."""
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise UserError(f"{folder} has {CONFIG_FILE} but no {WEIGHTS_FILE}")
    tensors = load_file(str(path))
    params = dict(model.named_parameters())
    expected = {n for n, p in params.items() if p.requires_grad}
    if set(tensors) != expected:
        missing, unknown = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise UserError(f"{path} does not fit the classifier described by {CONFIG_FILE}: "
                        f"missing {missing[:4]}, unexpected {unknown[:4]}")
    with torch.no_grad():
        for name, t in tensors.items():
            if params[name].shape != t.shape:
                raise UserError(f"{path}: {name} has shape {tuple(t.shape)}, expected {tuple(params[name].shape)}")
            params[name].copy_(t)


# ---------------------------------------------------------------------------------------------------------
# Prediction
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """The predicted label of one text and the probability of every label."""

    text: str
    label: str
    probabilities: dict[str, float]


class Classifier:
    """A fine-tuned classifier: model (with class head), tokenizer, label names, max length."""

    def __init__(self, model: nn.Module, tokenizer, info: ClassifierInfo):
        self.model, self.tokenizer, self.info = model.eval(), tokenizer, info

    @property
    def label_names(self) -> list[str]:
        return self.info.label_names

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, cut to the first `max_length` (as in training)."""
        if not text.strip():
            raise UserError("cannot classify an empty text")
        ids = list(self.tokenizer.encode(text))[: self.info.max_length]
        if not ids:
            raise UserError(f"the text {text!r} encodes to no tokens")
        return ids

    @torch.no_grad()
    def predict(self, texts: Sequence[str], batch_size: int = 16) -> list[Prediction]:
        """Classify each text (right-padded batches, logits at each text's last token)."""
        from llmscratch.data.classification import collate_classification
        from llmscratch.train.tasks.classify import last_token_logits

        device = next(self.model.parameters()).device
        encoded = [self.encode(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
        out: list[Prediction | None] = [None] * len(texts)
        for s in range(0, len(order), batch_size):
            chunk = order[s : s + batch_size]
            b = collate_classification([(torch.tensor(encoded[i]), 0) for i in chunk], self.info.pad_id)
            logits = last_token_logits(self.model, b.input_ids.to(device), b.last_index.to(device))
            probs = torch.softmax(logits.float(), dim=-1).cpu()  # (B, num_classes)
            for i, p in zip(chunk, probs):
                out[i] = Prediction(texts[i], self.label_names[int(p.argmax())],
                                    {name: float(v) for name, v in zip(self.label_names, p)})
        return out


def load_classifier(folder: str | Path, device=None) -> Classifier:
    """Rebuild a classifier saved by `finetune_classifier` (its base model is loaded through `load_model`)."""
    from llmscratch.utils import pick_device

    info = read_classifier_info(folder)
    dtype = getattr(torch, info.dtype)
    loaded = load_base(info.base_model, device=pick_device(device), dtype=dtype)
    model = loaded.model
    build_classifier(model, info.num_classes, info.spec)
    fingerprint = base_fingerprint(model, exclude=[n for n, p in model.named_parameters() if p.requires_grad])
    if fingerprint != info.base_fingerprint:
        raise UserError(
            f"the base model {info.base_model!r} has other weights than the one this classifier was trained on "
            "(fingerprint mismatch); load the same base model (same file, same preset seed)"
        )
    restore_trained(model, folder, info)
    merge_lora(model)  # inference only: fold the adapters into the weights (no extra matmuls)
    return Classifier(model, loaded.tokenizer, info)


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FinetuneConfig:
    """Settings of `finetune_classifier` (the flags of `llmscratch finetune classify`)."""

    model: str  # base model: registry name, preset, checkpoint / Hugging Face folder, .gguf file
    data: str = "sms-spam"  # "sms-spam" or a .csv / .tsv / .jsonl / .json file
    out: str = "runs/classify"
    trainable: str = "last-block"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: list[str] | None = None  # name patterns (default: every linear layer of the blocks)
    epochs: int = 3
    lr: float = 5e-5
    weight_decay: float = 0.1
    batch_size: int = 8
    max_length: int | None = None  # tokens per text (default: the longest training text, within the context)
    eval_every: int = 50
    balanced: bool | None = None  # undersample to the smallest class (default: yes for sms-spam, no for files)
    text_column: str = "text"
    label_column: str = "label"
    labels: list[str] | None = None  # allowed label values in id order (default: every value found, sorted)
    resume: bool = False
    overwrite: bool = False
    device: str | None = None
    seed: int = 123
    progress: bool = True

    def validate(self) -> TrainableSpec:
        """Raise UserError for settings that cannot work; return the trainable spec."""
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.max_length is None or self.max_length >= 1, f"--max-length must be >= 1, got {self.max_length}"),
            (self.eval_every >= 0, f"--eval-every must be >= 0, got {self.eval_every}"),
            (not (self.resume and self.overwrite), "--resume and --overwrite exclude each other"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        return parse_trainable(self.trainable, self.lora_rank, self.lora_alpha, self.lora_targets)


def load_splits(cfg: FinetuneConfig, labels: Sequence[str] | None = None):
    """(train, validation, test) ClassificationData and a description of the data, as `cfg` says.

    sms-spam: the book's recipe (balanced 747 + 747 messages, 70/10/20 split, seed 123). A file: read with the
    named columns, balanced when asked, then the same 70/10/20 split. `labels` fixes the allowed label values.
    """
    from llmscratch.data.classification import balance_classes, load_sms_spam, load_table, split_data

    balanced = cfg.balanced
    if cfg.data == "sms-spam":
        data = load_sms_spam()
        balanced = True if balanced is None else balanced
        if labels is not None and list(labels) != list(data.label_names):
            raise UserError(f"sms-spam has the labels {data.label_names}, the classifier has {list(labels)}")
    else:
        path = Path(cfg.data)
        if not path.is_file():
            raise UserError(f"--data {cfg.data!r} is neither 'sms-spam' nor an existing file")
        data = load_table(path, cfg.text_column, cfg.label_column, labels=labels)
        balanced = False if balanced is None else balanced
    if balanced:
        data = balance_classes(data, seed=123)
    splits = split_data(data, 0.7, 0.1, seed=123)
    for name, part in zip(("train", "validation", "test"), splits):
        if len(part) == 0:
            raise UserError(f"{cfg.data}: the {name} split is empty ({len(data)} rows); add more data")
    desc = {"name": cfg.data, "balanced": balanced, "label_names": data.label_names,
            "rows": {n: len(p) for n, p in zip(("train", "validation", "test"), splits)},
            "label_counts": {n: p.label_counts() for n, p in zip(("train", "validation", "test"), splits)}}
    return splits, desc


def _check_resume(out: Path, info: ClassifierInfo, previous: ClassifierInfo) -> None:
    """UserError when the run in `out` was set up differently (base model, what is trained, lengths).

    The classes were matched before (the data is read with the run's labels)."""
    for key in ("base_model", "base_fingerprint", "trainable", "max_length"):
        if getattr(previous, key) != getattr(info, key):
            raise UserError(f"cannot resume {out}: its {key} was {getattr(previous, key)!r}, now "
                            f"{getattr(info, key)!r}")


def _checkpoint_classes(out: Path) -> int | None:
    """The class count of the head in the newest checkpoint of `out` (None when there is none)."""
    from safetensors import safe_open

    from llmscratch.train.checkpoint import list_checkpoints

    found = list_checkpoints(out / "checkpoints")
    if not found or not (found[-1] / "model.safetensors").is_file():
        return None
    with safe_open(str(found[-1] / "model.safetensors"), framework="pt") as f:
        return f.get_slice("head.weight").get_shape()[0] if "head.weight" in f.keys() else None


def finetune_classifier(cfg: FinetuneConfig, base=None, command: str | None = None) -> dict:
    """Fine-tune a classifier as `cfg` says; write the classifier folder, report.json and the plots into cfg.out.

    `base`: an already loaded base model (anything with `.model` and `.tokenizer`) instead of loading
    `cfg.model` (its reference is still recorded as `cfg.model`). Returns the report (also in report.json).
    Every user mistake (bad flags, data, a resume that does not fit) raises UserError before training starts.
    """
    import time

    from llmscratch.data.classification import ClassificationDataset, pad_id_of
    from llmscratch.train.checkpoint import list_checkpoints
    from llmscratch.train.config import TrainConfig
    from llmscratch.train.tasks.classify import ClassificationTask, evaluate_classifier
    from llmscratch.train.trainer import seed_everything, train
    from llmscratch.utils import pick_device

    started = time.perf_counter()
    spec = cfg.validate()
    out = Path(cfg.out)
    previous = read_classifier_info(out) if (out / CONFIG_FILE).is_file() and cfg.resume else None
    existing = (out / CONFIG_FILE).is_file() or list_checkpoints(out / "checkpoints")
    if existing and not cfg.resume and not cfg.overwrite:
        raise UserError(f"{out} already holds a classifier run; pass --resume to continue it, --overwrite to start "
                        "again there, or choose another --out")
    (train_data, val_data, test_data), data_desc = load_splits(cfg, cfg.labels)
    if previous is not None and train_data.label_names != previous.label_names:
        if not set(train_data.label_names) <= set(previous.label_names):
            raise UserError(f"{out} was trained with {previous.num_classes} classes {previous.label_names}, the "
                            f"data has {train_data.num_classes}: {train_data.label_names}; use another --out or "
                            "the same labels")
        (train_data, val_data, test_data), data_desc = load_splits(cfg, previous.label_names)
    ckpt_classes = _checkpoint_classes(out) if cfg.resume else None
    if ckpt_classes is not None and ckpt_classes != train_data.num_classes:
        raise UserError(f"the checkpoint in {out / 'checkpoints'} has a head for {ckpt_classes} classes, the data "
                        f"has {train_data.num_classes} ({train_data.label_names})")

    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    loaded = base if base is not None else load_base(cfg.model, device=device)
    model, tokenizer = loaded.model, loaded.tokenizer
    if tokenizer is None:
        raise UserError(f"the model {cfg.model!r} comes without a tokenizer; give a model folder that has one")
    if getattr(loaded, "random_weights", False):
        print(f"warning: {cfg.model!r} is a preset with random weights (no pretrained weights): the classifier "
              "starts from an untrained model", file=sys.stderr)
    load_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    pad_id = pad_id_of(tokenizer)
    context = model.config.context_length
    max_length = cfg.max_length or (previous.max_length if previous else None)
    if max_length is not None and max_length > context:
        raise UserError(f"--max-length {max_length} exceeds the model's context length {context}")
    train_ds = ClassificationDataset(train_data, tokenizer, max_length or context)
    max_length = max_length or train_ds.longest
    val_ds = ClassificationDataset(val_data, tokenizer, max_length)
    test_ds = ClassificationDataset(test_data, tokenizer, max_length)
    tokenize_s = time.perf_counter() - t0

    seed_everything(cfg.seed)
    summary = build_classifier(model, train_data.num_classes, spec, seed=cfg.seed)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    base_ref = _model_reference(cfg.model)  # the tokenizer comes with the base model
    info = ClassifierInfo(
        base_model=base_ref, label_names=list(train_data.label_names), max_length=max_length,
        trainable=spec.to_dict(), base_fingerprint=base_fingerprint(model, trainable), pad_id=pad_id,
        tokenizer=base_ref, dtype=dtype,
    )
    if previous is not None:
        _check_resume(out, info, previous)
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume:
        (out / WEIGHTS_FILE).unlink(missing_ok=True)
    atomic_write_text(out / CONFIG_FILE, json.dumps(asdict(info), indent=2) + "\n")

    task = ClassificationTask(train_ds, val_ds, pad_id, seed=cfg.seed)
    tcfg = TrainConfig(
        out_dir=str(out), epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        schedule="constant", warmup_steps=0, eval_every=cfg.eval_every, seed=cfg.seed,
        device=cfg.device or "auto", sample_prompt=None, keep_last=1, export_models=False, progress=cfg.progress,
        extra={"task": "classify", "data": cfg.data, "labels": info.label_names, "trainable": spec.label},
    )
    result = train(model, task, tcfg, tokenizer=tokenizer, tokenizer_ref=info.tokenizer, resume=cfg.resume,
                   overwrite=cfg.overwrite)

    t0 = time.perf_counter()
    merge_lora(model)  # evaluation with the adapters folded into the weights: no extra products per layer
    evals = {name: evaluate_classifier(model, ds, cfg.batch_size, pad_id, f"{name} accuracy" if cfg.progress else None)
             for name, ds in (("train", train_ds), ("validation", val_ds), ("test", test_ds))}
    unmerge_lora(model)
    eval_s = time.perf_counter() - t0
    save_classifier(model, out, info)

    report = {
        "command": command,
        "config": asdict(cfg),
        "model": {"base": info.base_model, "source": getattr(loaded, "source", None),
                  "family": getattr(model.config, "family", None), **summary},
        "data": {**data_desc, "max_length": max_length, "longest_train_tokens": train_ds.longest},
        "accuracy": {k: v["accuracy"] for k, v in evals.items()},
        "loss": {k: v["loss"] for k, v in evals.items()},
        "train": {"steps": result.steps, "tokens_seen": result.tokens_seen, "best_val_loss": result.best_val_loss,
                  "best_step": result.best_step, "last_train_loss": result.last_train_loss,
                  "resumed_from": str(result.resumed_from) if result.resumed_from else None,
                  "evaluations": result.evals},
        "timings_s": {"load_model": load_s, "tokenize": tokenize_s, "train": result.seconds, "evaluate": eval_s,
                      "total": time.perf_counter() - started},
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "files": {"classifier": str(out / CONFIG_FILE), "weights": str(out / WEIGHTS_FILE),
                  "plot": str(result.plot) if result.plot else None, "metrics": str(out / "metrics.jsonl")},
    }
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def _model_reference(spec: str) -> str:
    """How to find the base model again: an existing path made absolute, else the name as given."""
    p = Path(spec).expanduser()
    return str(p.resolve()) if p.exists() else spec
