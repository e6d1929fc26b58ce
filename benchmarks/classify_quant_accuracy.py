"""Accuracy of a fine-tuned classifier with float32 weights against int8 / int4 weights (`--quantize`).

Loads the classifier folder written by `llmscratch finetune classify` once per weight format, rebuilds the
split it was trained with (the data settings in its report.json: sms-spam's book split by default) and prints
the accuracy of each format on that split, and how many predictions the quantized weights change.

    python benchmarks/classify_quant_accuracy.py --model runs/spam --quantize int8,int4 --split test
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def split_data(run: Path, split: str, label_names: list[str]):
    """The `split` of the data the classifier in `run` was trained on (from its report.json, else sms-spam)."""
    from llmscratch.data.classification import load_classification_splits

    settings = {}
    if (run / "report.json").is_file():
        settings = json.loads((run / "report.json").read_text()).get("config", {})
    splits, _ = load_classification_splits(settings.get("data", "sms-spam"), settings.get("text_column", "text"),
                                           settings.get("label_column", "label"), settings.get("balanced"),
                                           label_names)
    return splits[("train", "validation", "test").index(split)]


def accuracy(run: Path, quantize: str | None, data, batch_size: int) -> tuple[float, list[str], float]:
    """(accuracy, predicted labels, seconds) of the classifier in `run` with `quantize` weights on `data`."""
    from llmscratch.train.tasks.classify import predict
    from llmscratch.weights.classifier import load_classifier

    clf = load_classifier(run, device="cpu", quantize=quantize)
    info = clf.info
    start = time.perf_counter()
    preds = [p.label for p in predict(clf.model, clf.tokenizer, data.texts, info.label_names, info.max_length,
                                      info.pad_id, batch_size)]
    seconds = time.perf_counter() - start
    truth = [data.label_names[y] for y in data.labels]
    return sum(p == t for p, t in zip(preds, truth)) / len(truth), preds, seconds


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="classifier folder written by `llmscratch finetune classify`")
    p.add_argument("--quantize", default="int8", help="comma-separated formats to compare with float32 "
                   "(int8, int4; default int8)")
    p.add_argument("--split", choices=("train", "validation", "test"), default="test")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    import torch

    from llmscratch.weights.classifier import read_classifier_info

    run = Path(args.model)
    data = split_data(run, args.split, read_classifier_info(run).label_names)
    print(f"{run}: {args.split} split, {len(data)} texts; torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, load {os.getloadavg()[0]:.2f}")
    results, float_preds = {}, None
    for fmt in [None, *[f.strip() for f in args.quantize.split(",") if f.strip()]]:
        acc, preds, seconds = accuracy(run, fmt, data, args.batch_size)
        name = fmt or "float32"
        changed = None if float_preds is None else sum(a != b for a, b in zip(preds, float_preds))
        float_preds = float_preds or preds
        results[name] = {"accuracy": acc, "changed_predictions": changed, "seconds": round(seconds, 1)}
        print(f"{name:8s} {args.split} accuracy {acc:.2%}" + ("" if changed is None else
              f"  ({changed} of {len(data)} predictions differ from float32)") + f"  [{seconds:.1f} s]")
    return results


if __name__ == "__main__":
    main()
