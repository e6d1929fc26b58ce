"""`llmscratch classify`: label texts with a classifier trained by `llmscratch finetune classify`."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmscratch.utils import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify texts with a fine-tuned classifier folder",
        description="Print the predicted label and the probability of every label, for the texts of --text or "
        "for each line of an --input file (one of the two).",
        epilog='Examples: llmscratch classify --model runs/spam-lora --text "You won a prize! Call now" --text "See '
        'you at 6"; llmscratch classify --model runs/spam-lora --input messages.txt (messages.txt: a UTF-8 text '
        'file of your own, one message per line)',
    )
    p.add_argument("--model", required=True, help="classifier folder written by `llmscratch finetune classify`")
    p.add_argument("--text", action="append", help="a text to classify (may be given several times)")
    p.add_argument("--input", metavar="FILE",
                   help="a UTF-8 text file of your own, one text per line (empty lines are skipped); instead of --text")
    p.add_argument("--batch-size", type=int, default=16, help="texts per batch (default: 16)")
    p.add_argument("--json", action="store_true", help="one JSON object per text instead of a table")
    p.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: auto)")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="int8 or int4 weights for every block Linear and the head (see docs/quant.md)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    import json

    from llmscratch.train.tasks.classify import predict
    from llmscratch.weights.classifier import load_classifier

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if (args.text is None) == (args.input is None):
        raise UserError("give the texts to classify either with --text (repeatable) or with --input FILE (a UTF-8 "
                        "file, one text per line), " + ("not both" if args.text else "one of the two"))
    if args.input is not None:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"--input file {path} not found")
        try:
            texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as e:
            raise UserError(f"--input file {path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
        if not texts:
            raise UserError(f"{path} holds no text")
    else:
        texts = args.text
    clf = load_classifier(args.model, device=args.device, quantize=args.quantize)
    info = clf.info
    for pred in predict(clf.model, clf.tokenizer, texts, info.label_names, info.max_length, info.pad_id,
                        args.batch_size):
        if args.json:
            print(json.dumps({"text": pred.text, "label": pred.label, "probabilities": pred.probabilities}))
        else:
            probs = "  ".join(f"{name} {p:.4f}" for name, p in pred.probabilities.items())
            print(f"{pred.label}\t{probs}\t{pred.text}")
