"""`llmscratch finetune classify`: fine-tune a language model as a text classifier (SMS spam or your table)."""

from __future__ import annotations

import argparse
import shlex


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained model (classify: text classification)",
        description="Fine-tune one of our models (GPT-2 or Llama family) for a task.",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    _register_classify(tasks)


def _register_classify(tasks) -> None:
    c = tasks.add_parser(
        "classify",
        help="text classification: a class head on the last token, trained on labelled texts",
        description="Replace the model's vocabulary head by a class head read at each text's last token and "
        "train it (with the last block, the last N blocks, everything, or LoRA adapters) on labelled texts. "
        "Prints train/validation/test accuracy and writes OUT/classifier.json + classifier.safetensors (what "
        "`llmscratch classify` needs), report.json, loss.png (loss and accuracy), metrics.jsonl and checkpoints.",
        epilog="Examples: llmscratch finetune classify --model smollm2-135m-instruct --data sms-spam "
        "--trainable lora --max-length 96 --epochs 3 --out runs/spam-lora    |    llmscratch finetune classify "
        "--model gpt2 --data reviews.csv --text-column review --label-column stars --full",
    )
    actions: list[argparse.Action] = []

    def add(*flags, into=c, **kw) -> None:
        actions.append(into.add_argument(*flags, **kw))

    add("--model", required=True,
        help="base model: registry name (smollm2-135m-instruct, gpt2, ...), preset (gpt2-124m: random "
        "weights), checkpoint or Hugging Face folder, or .gguf file")
    add("--data", default="sms-spam",
        help="sms-spam (the book's data and split) or a .csv/.tsv/.jsonl/.json file (default: sms-spam)")
    add("--text-column", default="text", help="column (or field) holding the text (default: text)")
    add("--label-column", default="label", help="column (or field) holding the label (default: label)")
    add("--labels", default=None,
        help="comma-separated allowed labels in class order (default: every value found, sorted); "
        "any other value is an error")
    balance = c.add_mutually_exclusive_group()
    add("--balanced", dest="balanced", action="store_true", default=None, into=balance,
        help="undersample every class to the smallest one (default for sms-spam)")
    add("--full", dest="balanced", action="store_false", into=balance,
        help="use every row (default for data files)")
    add("--trainable", default="last-block",
        help="what to train: last-block (+ final norm + head, the book's choice), last-N (e.g. last-2), "
        "all, or lora (adapters + head) (default: last-block)")
    add("--lora-rank", type=int, default=16, help="LoRA rank (default: 16)")
    add("--lora-alpha", type=float, default=16.0, help="LoRA alpha; the update is scaled by alpha/rank "
        "(default: 16)")
    add("--lora-targets", default=None,
        help="comma-separated name patterns of the linear layers that get adapters, e.g. 'attn.*' or "
        "'qkv,ffn.*' (default: every linear layer of the blocks)")
    add("--epochs", type=int, default=3, help="passes over the training set (default: 3)")
    add("--lr", type=float, default=5e-5, help="AdamW learning rate, constant (default: 5e-5)")
    add("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (default: 0.1)")
    add("--batch-size", type=int, default=8, help="texts per batch (default: 8)")
    add("--max-length", type=int, default=None,
        help="tokens kept per text (its first ones; default: the longest training text)")
    add("--eval-every", type=int, default=50,
        help="steps between validation evaluations, 0: only at the end (default: 50)")
    add("--out", default="runs/classify", help="output folder (default: runs/classify)")
    add("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    add("--overwrite", action="store_true", help="replace an earlier run in --out")
    add("--device", default=None, help="cpu, cuda, mps or auto (default: auto)")
    add("--seed", type=int, default=123, help="seed of the head/adapter initialisation and data order")
    add("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_run_classify, command_actions=actions)


def _command(args: argparse.Namespace) -> str:
    """The command line of this run: `llmscratch finetune classify` and every flag whose value is not the default."""
    parts = ["llmscratch", "finetune", "classify"]
    for a in args.command_actions:
        value = getattr(args, a.dest)
        if a.nargs == 0:  # a switch
            if value == a.const and value != a.default:
                parts.append(a.option_strings[0])
        elif value != a.default or a.required:
            parts += [a.option_strings[0], str(value)]
    return shlex.join(parts)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _run_classify(args: argparse.Namespace) -> None:
    from llmscratch.classify import FinetuneConfig, finetune_classifier

    cfg = FinetuneConfig(
        model=args.model, data=args.data, out=args.out, trainable=args.trainable, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_targets=_split(args.lora_targets), epochs=args.epochs, lr=args.lr,
        weight_decay=args.weight_decay, batch_size=args.batch_size, max_length=args.max_length,
        eval_every=args.eval_every, balanced=args.balanced, text_column=args.text_column,
        label_column=args.label_column, labels=_split(args.labels), resume=args.resume, overwrite=args.overwrite,
        device=args.device, seed=args.seed, progress=not args.no_progress,
    )
    report = finetune_classifier(cfg, command=_command(args))
    m, t = report["model"], report["timings_s"]
    print(f"model {m['base']} ({m['family']}): {m['trainable']}, {m['trainable_params']:,} of "
          f"{m['total_params']:,} parameters trained")
    rows = report["data"]["rows"]
    for split in ("train", "validation", "test"):
        print(f"{split + ' accuracy:':<21}{report['accuracy'][split] * 100:6.2f}%  (loss {report['loss'][split]:.4f}, "
              f"{rows[split]} texts)")
    print(f"training time: {t['train']:.1f} s ({report['train']['steps']} steps); total {t['total']:.1f} s")
    print(f"classifier, report.json and loss.png in {args.out}")
