"""`llmscratch finetune classify|instruct|dpo`: fine-tune a language model (text classification, instruction
following, preference tuning)."""

from __future__ import annotations

import shlex

from llmscratch.config import add_command, to_argv
from llmscratch.recipes.classify import ClassifyConfig
from llmscratch.recipes.dpo import DPOConfig
from llmscratch.recipes.instruct import InstructConfig
from llmscratch.utils import plural


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained model (classify: text classification; instruct: instruction following; "
        "dpo: preference tuning)",
        description="Fine-tune one of our models (GPT-2 or Llama family) for a task.",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    add_command(
        tasks, "classify", ClassifyConfig, _run_classify,
        help="text classification: a class head on the last token, trained on labelled texts",
        description="Replace the model's vocabulary head by a class head read at each text's last token and "
        "train it (with the last block, the last N blocks, everything, or LoRA adapters) on labelled texts. "
        "Prints train/validation/test accuracy and writes OUT/classifier.json + classifier.safetensors (what "
        "`llmscratch classify` needs), report.json, loss.png (loss and accuracy), metrics.jsonl and checkpoints.",
        epilog="Examples: llmscratch finetune classify --model smollm2-135m-instruct --data sms-spam "
        "--trainable lora --max-length 96 --epochs 3 --out runs/spam-lora    |    llmscratch finetune classify "
        "--model gpt2 --data reviews.csv --text-column review --label-column stars --full",
    )
    add_command(
        tasks, "instruct", InstructConfig, _run_instruct,
        help="instruction fine-tuning (the book's chapter 7) in the alpaca, phi3 or the model's own chat format",
        description="Fine-tune a pretrained model to follow instructions: entries are written in a prompt format, "
        "the end-of-text token appended, padded, targets shifted by one (padding, and with --mask-prompt the "
        "prompt, get no loss). Three fixed validation instructions are answered before training, at each "
        "evaluation and after. Writes OUT/final (a model folder that generate, chat, export and evaluate load, "
        "its prompt format recorded), report.json, loss.png, metrics.jsonl and checkpoints.",
        epilog="Examples: llmscratch finetune instruct --model gpt2-medium --data instruction-data --epochs 2 "
        "--lr 5e-5 --batch-size 8 --out runs/instruct   |   llmscratch finetune instruct --model "
        "smollm2-135m-instruct --prompt-format chat --mask-prompt --trainable lora --epochs 1 --out runs/smol",
    )
    add_command(
        tasks, "dpo", DPOConfig, _run_dpo,
        help="preference tuning (DPO): prefer the chosen answer of each pair over the rejected one",
        description="Direct Preference Optimization: train the model to give its chosen answers a higher "
        "probability than its rejected ones, measured against the frozen starting model (the reference). Prints "
        "the test reward accuracy and margin before and after, and the validation ones after; writes OUT/final (a "
        "model folder, LoRA merged), report.json, dpo.png (loss, reward margin and accuracy on train and "
        "validation), metrics.jsonl, checkpoints and, with --reference precomputed, reference_logprobs.safetensors.",
        epilog="Example: llmscratch finetune dpo --model runs/instruct/final --data instruction-data-preference "
        "--beta 0.1 --lr 5e-6 --epochs 1 --batch-size 8 --trainable lora --out runs/dpo",
    )



def _run_instruct(cfg: InstructConfig) -> None:
    from llmscratch.recipes import instruct

    r = instruct.run(cfg, command=shlex.join(["llmscratch", "finetune", "instruct", *to_argv(cfg)]))
    m, t = r["model"], r["train"]
    print(f"model {m['base']} ({m['family']}), prompt format {r['prompt_format']}: {m['trainable']}, "
          f"{m['trainable_params']:,} of {m['total_params']:,} parameters trained")
    for before, after in zip(r["samples"]["before"], r["samples"]["after"]):
        print(f"{before['instruction'][:60]!r}\n    before: {before['response'][:120]!r}\n    after:  "
              f"{after['response'][:120]!r}")
    if t["first_val_loss"] is not None:
        stopped = f", stopped: {t['stop_reason']}" if t["stop_reason"] else ""
        print(f"validation loss {t['first_val_loss']:.4f} (after step {t.get('first_eval_step') or 1}) -> "
              f"{t['last_val_loss']:.4f} in "
              f"{plural(t['steps'], 'step')}, "
              f"{t['seconds']:.0f} s{stopped}")
    print(f"tuned model in {r['files']['model']} (llmscratch chat --model {r['files']['model']}); report.json and "
          f"loss.png in {cfg.train.out_dir}")


def _run_dpo(cfg: DPOConfig) -> None:
    from llmscratch.recipes import dpo

    report = dpo.run(cfg, command=shlex.join(["llmscratch", "finetune", "dpo", *to_argv(cfg)]))
    print(dpo.format_report(report))


def _run_classify(cfg: ClassifyConfig) -> None:
    from llmscratch.recipes import classify

    report = classify.run(cfg, command=shlex.join(["llmscratch", "finetune", "classify", *to_argv(cfg)]))
    m, t = report["model"], report["timings_s"]
    print(f"model {m['base']} ({m['family']}): {m['trainable']}, {m['trainable_params']:,} of "
          f"{m['total_params']:,} parameters trained")
    rows = report["data"]["rows"]
    for split in ("train", "validation", "test"):
        print(f"{split + ' accuracy:':<21}{report['accuracy'][split] * 100:6.2f}%  (loss {report['loss'][split]:.4f}, "
              f"{rows[split]} texts)")
    stopped = f", stopped: {report['train']['stop_reason']}" if report["train"]["stop_reason"] else ""
    steps = plural(report["train"]["steps"], "step")
    print(f"training time: {t['train']:.1f} s ({steps}{stopped}); total {t['total']:.1f} s")
    print(f"classifier, report.json and loss.png in {cfg.train.out_dir}")
