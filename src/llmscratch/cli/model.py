"""`llmscratch model info NAME`: parameter count and memory needs of a model preset or model folder."""

from __future__ import annotations

import argparse

from llmscratch.utils import human_bytes as _size


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "model",
        help="facts about a model: preset, registered model, folder or .gguf (sizes, memory)",
        description="Facts about model presets, registered models and model folders, computed from the config "
        "without loading weights.",
    )
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "info",
        help="parameter count and memory estimate of a preset or model folder",
        description="Parameter count, weight memory in float32 and bfloat16, the KV cache at full context "
        "(batch 1), and the bytes read per generated token (the memory traffic that bounds batch-1 decoding).",
    )
    p.add_argument("name", help="a preset (e.g. gpt2-124m; `llmscratch model list` shows them), a registered model "
                   "(e.g. gemma-3-270m; `llmscratch models list`; fetched if not cached), a model folder or "
                   "a .gguf file")
    p.set_defaults(func=_info)
    text = ("the model presets: architectures by exact name, with random weights (real pretrained models: "
            "`llmscratch models list`)")
    p = sub.add_parser("list", help=text, description=text)
    p.set_defaults(func=_list)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


def _info(args: argparse.Namespace) -> None:
    from llmscratch.model import config_to_dict
    from llmscratch.model.base import model_size
    from llmscratch.weights import model_config

    config = model_config(args.name)
    size = model_size(config)
    c = config_to_dict(config)
    print(f"{args.name}: {config.family}, {config.n_layers} layers, {config.n_heads} heads "
          f"({config.n_kv_heads} key/value heads) of {config.head_dim}, width {config.emb_dim}, "
          f"context {config.context_length}, vocabulary {config.vocab_size}"
          f"{', tied head' if c.get('tie_embeddings') else ''}")
    embedding = config.vocab_size * config.emb_dim
    print(f"parameters: {size.params:,} ({_count(size.params)}), of which {embedding:,} "
          f"({100 * embedding / size.params:.0f}%) in the {config.vocab_size:,}-token embedding table")
    print(f"weights: {_size(size.weight_bytes(4))} in float32, {_size(size.weight_bytes(2))} in bfloat16")
    if (q := _stored_quantized(args.name)) is not None:
        print(f"stored quantized: {q[0]}: {_size(q[1])} of safetensors on disk")
    if (g := _stored_gguf(args.name)) is not None:
        print(f"stored as GGUF: {g}")
    print(f"KV cache at full context ({config.context_length} tokens, batch 1): "
          f"{_size(size.kv_cache_bytes(4))} in float32, {_size(size.kv_cache_bytes(2))} in bfloat16")
    per_token = size.kv_cache_bytes(4, tokens=1)
    if size.window:
        n_local = size.kv_values_per_token_local // (2 * config.n_kv_heads * config.head_dim)
        print(f"KV cache with the sliding window kept as a ring buffer ({size.window} slots in {n_local} of "
              f"{config.n_layers} layers): {_size(size.kv_cache_bytes_windowed(4))} in float32, "
              f"{_size(size.kv_cache_bytes_windowed(2))} in bfloat16; llmscratch's cache keeps every slot")
        average = size.kv_cache_bytes_windowed(4) / config.context_length
        print(f"KV cache per token (float32): {_size(per_token)} without the window, {_size(average)} with it "
              "(average at full context)")
    else:
        print(f"KV cache per token: {_size(per_token)} in float32")
    print(f"read per generated token (batch 1): {_size(size.bytes_read_per_token(4))} in float32, "
          f"{_size(size.bytes_read_per_token(2))} in bfloat16"
          + (f"; about {_size(q[1])} as stored, {q[0]}" if q is not None else ""))


def _stored_quantized(name: str) -> tuple[str, int] | None:
    """How a model folder saved by `llmscratch quantize` holds its weights: ("int4, group 32", bytes of
    safetensors on disk); None for anything else."""
    from pathlib import Path

    from llmscratch.utils import json_object

    folder = Path(name).expanduser()
    q = (json_object(folder / "config.json") or {}).get("quantization")
    if not isinstance(q, dict):
        return None
    on_disk = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    group = f", group {q['group']}" if q.get("group") else ""
    return f"{q.get('format', '?')}{group}", on_disk


def _stored_gguf(name: str) -> str | None:
    """A .gguf file's (or a registered model's fetched GGUF's) size and tensor types ("94.1 MB file; tensors:
    Q4_1 x 211, F32 x 61"); None for anything else."""
    from collections import Counter

    from llmscratch.weights.gguf import ggml_type_name, open_gguf
    from llmscratch.weights.registry import local_copy

    path = local_copy(name)
    if path is None or not (path.is_file() and path.suffix == ".gguf"):
        return None
    types = Counter(ggml_type_name(t) for t in open_gguf(path).tensors)
    shown = ", ".join(f"{kind} x {n}" for kind, n in types.most_common())
    return f"{_size(path.stat().st_size)} file; tensors: {shown}"


def _list(args: argparse.Namespace) -> None:
    from llmscratch.model import PRESETS
    from llmscratch.model.base import model_size

    for name, config in PRESETS.items():
        print(f"{name:18s} {config.family:6s} {_count(model_size(config).params):>9s} parameters, "
              f"context {config.context_length}")
