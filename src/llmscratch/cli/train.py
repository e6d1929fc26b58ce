"""`llmscratch pretrain`: train a GPT from scratch on a text, a data set name or a token file."""

from __future__ import annotations

import argparse

from llmscratch.utils import UserError

# (flag, type, default, help). Defaults live here, not in argparse, so that a --config file can sit between
# them and the command line: defaults < config file < flags given.
OPTIONS: list[tuple[str, object, object, str]] = [
    ("--data", str, None, "data set name (e.g. the-verdict), a UTF-8 text file, or a token file *.bin from "
                          "`llmscratch data tokenize`"),
    ("--model", str, "gpt2-124m", "model preset (architecture; weights start random)"),
    ("--context", int, None, "context length in tokens (default: the preset's)"),
    ("--stride", int, None, "distance between window starts (default: the context length, no overlap)"),
    ("--train-ratio", float, 0.9, "share of the data used for training; the rest is validation"),
    ("--tokenizer", str, "gpt2", "gpt2, or a tokenizer file/folder (the model's vocabulary follows it)"),
    ("--dropout", float, 0.0, "dropout rate"),
    ("--no-qkv-bias", bool, False, "no bias in the query/key/value projection"),
    ("--no-tie-embeddings", bool, False, "a separate output head instead of the token embedding (the book's 163M)"),
    ("--init", str, "gpt2", "weight initialisation: gpt2 (normal, std 0.02) or torch (PyTorch's per-layer defaults, "
                            "as the book's GPTModel)"),
    ("--batch-size", int, 8, "sequences per micro-batch per process"),
    ("--grad-accum", int, 1, "micro-batches per optimizer step"),
    ("--epochs", int, 1, "passes over the training windows"),
    ("--max-steps", int, None, "stop after this many optimizer steps"),
    ("--max-seconds", float, None, "stop (evaluate and save) once training has run this many seconds"),
    ("--lr", float, 4e-4, "peak learning rate"),
    ("--min-lr", float, None, "floor of the cosine decay (default: lr / 10)"),
    ("--schedule", str, "cosine", "cosine (warmup then cosine decay) or constant (warmup then lr)"),
    ("--warmup-steps", int, 0, "linear warmup steps"),
    ("--weight-decay", float, 0.1, "AdamW weight decay (matrices only)"),
    ("--grad-clip", float, 1.0, "clip the global gradient norm to this (0: no clipping)"),
    ("--eval-every", int, 50, "optimizer steps between evaluations"),
    ("--eval-batches", int, None, "validation batches per evaluation (default: all)"),
    ("--eval-train-batches", int, 0, "also measure the train loss in eval mode on this many train batches"),
    ("--patience", int, None, "early stopping: evaluations without a better validation loss"),
    ("--save-every", int, None, "optimizer steps between checkpoints (default: at each evaluation)"),
    ("--keep-last", int, 3, "newest checkpoints to keep (the best model is kept apart, in OUT/best)"),
    ("--sample-prompt", str, "Every effort moves you", "prompt continued at each evaluation"),
    ("--sample-tokens", int, 30, "tokens generated for the sample (0: none)"),
    ("--out", str, "runs/pretrain", "output folder: checkpoints/, final/ and best/ models, metrics.jsonl, loss.png"),
    ("--resume", bool, False, "continue the run in --out from its newest good checkpoint"),
    ("--overwrite", bool, False, "replace an earlier run in --out"),
    ("--device", str, "auto", "cpu, cuda, mps or auto"),
    ("--compile", bool, False, "torch.compile the model"),
    ("--seed", int, 123, "random seed (initialisation, data order, dropout)"),
    ("--tensorboard", bool, False, "also log to OUT/tensorboard (needs the tensorboard package)"),
    ("--no-progress", bool, False, "no progress bar"),
]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


DEFAULTS = {_dest(f): d for f, _, d, _ in OPTIONS}
TYPES = {_dest(f): t for f, t, _, _ in OPTIONS}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="train a GPT from scratch on a text corpus",
        description="Train a GPT model from scratch with next-token prediction. Runs on several processes "
        "with `torchrun --nproc_per_node=N -m llmscratch pretrain ...` (DistributedDataParallel).",
        epilog="Example (the book's chapter 5): llmscratch pretrain --data the-verdict --model gpt2-124m "
        "--context 256 --dropout 0.1 --no-qkv-bias --no-tie-embeddings --init torch --lr 4e-4 --weight-decay 0.1 "
        "--batch-size 2 --epochs 10 --schedule constant --grad-clip 0 --eval-every 5 --eval-train-batches 5 "
        "--out runs/verdict",
    )
    for flag, typ, default, text in OPTIONS:
        shown = "" if default in (None, False) else f" (default: {default})"
        if typ is bool:
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=typ, default=argparse.SUPPRESS, help=text + shown)
    p.add_argument("--config", default=argparse.SUPPRESS,
                   help="YAML or JSON file of settings (keys = flag names); flags given here override it")
    p.set_defaults(func=_run)


def resolve_options(args: argparse.Namespace) -> dict:
    """defaults < config file < flags given on the command line."""
    from llmscratch.train.config import load_options_file

    given = {k: v for k, v in vars(args).items() if k in DEFAULTS}
    from_file = {}
    if getattr(args, "config", None):
        from_file = load_options_file(args.config)
        unknown = set(from_file) - set(DEFAULTS)
        if unknown:
            raise UserError(f"{args.config}: unknown settings {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(DEFAULTS))}")
        for k, v in from_file.items():
            typ = TYPES[k]
            if v is None or (typ is bool and isinstance(v, bool)):
                continue
            try:
                from_file[k] = typ(v) if typ is not bool else _as_bool(v)
            except (TypeError, ValueError):
                raise UserError(f"{args.config}: {k} must be {typ.__name__}, got {v!r}") from None
    opts = {**DEFAULTS, **from_file, **given}
    if not opts["data"]:
        raise UserError("--data is required (a data set name, a text file or a token file), on the command line "
                        "or in the --config file")
    return opts


def _as_bool(v) -> bool:
    if isinstance(v, str) and v.lower() in ("true", "yes", "1", "false", "no", "0"):
        return v.lower() in ("true", "yes", "1")
    raise ValueError(v)


def _run(args: argparse.Namespace) -> None:
    from llmscratch.train.runner import pretrain_from_options

    opts = resolve_options(args)
    result = pretrain_from_options(opts)
    if result is not None:
        print(result)
