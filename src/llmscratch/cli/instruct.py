"""`llmscratch finetune instruct`: flags generated from `InstructConfig` (its fields, defaults and help)."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing

from llmscratch.recipes.instruct import InstructConfig


def _flag(name: str) -> str:
    return "--no-progress" if name == "progress" else "--" + name.replace("_", "-")


def add_instruct(tasks) -> None:
    """The `instruct` subcommand of `llmscratch finetune`."""
    p = tasks.add_parser(
        "instruct", help="instruction fine-tuning (the book's chapter 7): alpaca, phi3 or the model's chat format",
        description="Fine-tune a pretrained model to follow instructions: entries are written in a prompt format, "
        "the end-of-text token appended, padded, targets shifted by one (padding, and with --mask-prompt the "
        "prompt, get no loss). At each evaluation three fixed validation instructions are answered. Writes "
        "OUT/final (a model folder that generate, chat, export and evaluate load, its prompt format recorded), "
        "report.json, loss.png, metrics.jsonl and checkpoints.",
        epilog="Examples: llmscratch finetune instruct --model gpt2-medium --data instruction-data --epochs 2 "
        "--lr 5e-5 --batch-size 8 --out runs/instruct   |   llmscratch finetune instruct --model "
        "smollm2-135m-instruct --prompt-format chat --trainable lora --epochs 1 --out runs/smol",
    )
    hints = typing.get_type_hints(InstructConfig)
    for f in dataclasses.fields(InstructConfig):
        help_text, default = f.metadata["help"], f.default
        if hints[f.name] is bool:
            const = not default
            p.add_argument(_flag(f.name), dest=f.name, action="store_const", const=const, default=default,
                           help="no " + help_text if f.name == "progress" else help_text)
            continue
        base = next(a for a in typing.get_args(hints[f.name]) or (hints[f.name],) if a is not type(None))
        shown = "" if default is None else f" (default: {default})"
        p.add_argument(_flag(f.name), dest=f.name, type=base, default=default, choices=f.metadata.get("choices"),
                       required=f.name == "model", help=help_text + shown)
    p.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> InstructConfig:
    return InstructConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(InstructConfig)})


def command_line(cfg: InstructConfig) -> str:
    """`llmscratch finetune instruct` with every setting that differs from the default."""
    parts = ["llmscratch", "finetune", "instruct"]
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if value == f.default and f.name != "model":
            continue
        if isinstance(value, bool):
            parts.append(_flag(f.name))
        else:
            parts += [_flag(f.name), str(value)]
    return shlex.join(parts)


def _run(args: argparse.Namespace) -> None:
    from llmscratch.recipes.instruct import run

    cfg = config_from_args(args)
    r = run(cfg, command=command_line(cfg))
    m, t = r["model"], r["train"]
    print(f"model {m['base']} ({m['family']}), prompt format {r['prompt_format']}: {m['trainable']}, "
          f"{m['trainable_params']:,} of {m['total_params']:,} parameters trained")
    first, last = t["first_val_loss"], t["last_val_loss"]
    if first is not None:
        print(f"validation loss {first:.4f} -> {last:.4f} in {t['steps']} steps, {t['seconds']:.0f} s"
              + (f" (stopped: {t['stop_reason']})" if t["stop_reason"] else ""))
    print(f"tuned model in {r['files']['model']} (try: llmscratch chat --model {r['files']['model']}); "
          f"report.json and loss.png in {cfg.out}")
