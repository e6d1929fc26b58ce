"""`llmscratch pretrain`: train a GPT from scratch on a text, a data set name or a token file."""

from __future__ import annotations

from llmscratch.config import add_command
from llmscratch.recipes.pretrain import PretrainConfig


def register(subparsers) -> None:
    add_command(
        subparsers, "pretrain", PretrainConfig, _run,
        help="train a GPT from scratch on a text corpus",
        description="Train a GPT model from scratch with next-token prediction. Runs on several processes "
        "with `torchrun --nproc_per_node=N -m llmscratch pretrain ...` (DistributedDataParallel).",
        epilog="Example (the book's chapter 5): llmscratch pretrain --data the-verdict --model gpt2-124m "
        "--context 256 --dropout 0.1 --no-qkv-bias --no-tie-embeddings --init torch --lr 4e-4 --weight-decay 0.1 "
        "--batch-size 2 --epochs 10 --schedule constant --grad-clip 0 --eval-every 5 --eval-train-batches 5 "
        "--out runs/verdict",
    )


def _run(cfg: PretrainConfig) -> None:
    from llmscratch.recipes import pretrain

    summary = pretrain.run(cfg)
    if summary is not None:
        print(summary)
