"""`llmscratch demo`: the whole pipeline in a few minutes on a laptop CPU (the recipe: llmscratch.recipes.demo)."""

from __future__ import annotations

from llmscratch.config import add_command
from llmscratch.recipes.demo import DemoSettings


def register(subparsers) -> None:
    add_command(
        subparsers, "demo", DemoSettings, _run,
        help="train a tokenizer and a small GPT in a few minutes on the CPU, then generate (no network needed)",
        description="Trains our BPE tokenizer and a small GPT on a corpus every machine has (Python's help "
        "topics; the book's the-verdict when a data mirror is set), shows the loss falling, saves the loss plot, "
        "and generates text with and without the KV cache. Then a real pretrained model (SmolLM2-135M-Instruct, "
        "loaded by our own GGUF reader) answers a question.",
    )


def _run(settings: DemoSettings) -> None:
    from llmscratch.recipes import demo

    demo.run(settings)
