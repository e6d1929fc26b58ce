"""`llmscratch classify`: label texts with a classifier trained by `llmscratch finetune classify`."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmscratch.utils import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify texts with a fine-tuned classifier folder",
        description="Print the predicted label and the probability of every label, for --text or for each "
        "line of --input.",
        epilog='Example: llmscratch classify --model runs/spam-lora --text "You won a prize! Call now"',
    )
    p.add_argument("--model", required=True, help="classifier folder written by `llmscratch finetune classify`")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", action="append", help="a text to classify (may be given several times)")
    what.add_argument("--input", help="a UTF-8 file: one text per line (empty lines are skipped)")
    p.add_argument("--batch-size", type=int, default=16, help="texts per batch (default: 16)")
    p.add_argument("--json", action="store_true", help="one JSON object per text instead of a table")
    p.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: auto)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    import json

    from llmscratch.train.tasks.classify import predict
    from llmscratch.weights.classifier import load_classifier

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"--input file {path} not found")
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not texts:
            raise UserError(f"{path} holds no text")
    else:
        texts = args.text
    clf = load_classifier(args.model, device=args.device)
    info = clf.info
    for pred in predict(clf.model, clf.tokenizer, texts, info.label_names, info.max_length, info.pad_id,
                        args.batch_size):
        if args.json:
            print(json.dumps({"text": pred.text, "label": pred.label, "probabilities": pred.probabilities}))
        else:
            probs = "  ".join(f"{name} {p:.4f}" for name, p in pred.probabilities.items())
            print(f"{pred.label}\t{probs}\t{pred.text}")
