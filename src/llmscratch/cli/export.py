"""`llmscratch export`: write a model as a Hugging Face folder (transformers loads it) or as one of ours."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model to the Hugging Face format (or ours)",
        description="Load --model (registered name, model folder, .gguf file, Hub id or preset) and write it to "
        "-o DIR. --format hf writes config.json + model.safetensors + tokenizer files that "
        "transformers' from_pretrained loads (GPT-2: GPT2LMHeadModel, with vocab.json + merges.txt; Llama: "
        "LlamaForCausalLM; Gemma 3: Gemma3ForCausalLM; tokenizer.json for every tokenizer). --format ours writes "
        "our own model folder. The model's licence or terms file (LICENSE, GEMMA_TERMS.html...) is copied along. "
        "The folder is written atomically. An existing -o folder is replaced only when it is one of our outputs "
        "(it holds only the files we write: weights, config, tokenizer); anything else (a folder with other "
        "files, a file, a link) is refused unless --overwrite.",
    )
    p.add_argument("--model", required=True, help="model name or path")
    p.add_argument("--format", choices=["hf", "ours"], default="hf", help="hf (default) or ours")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="the type of the weights written (default: float32; bfloat16 and float16 halve the files)")
    p.add_argument("-o", "--out", required=True, help="output folder (an earlier export there is replaced)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace -o even when it is not one of our outputs (its content is deleted)")
    p.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    from pathlib import Path

    import torch

    from llmscratch.model.base import model_size
    from llmscratch.utils import atomic_write_bytes, check_folder_spares, check_replaceable
    from llmscratch.weights import load_model
    from llmscratch.weights.hf import export_hf
    from llmscratch.weights.ours import save_pretrained
    from llmscratch.weights.registry import license_files

    check_folder_spares(args.out, args.model)
    check_replaceable(args.out, args.overwrite)  # before the model is loaded
    loaded = load_model(args.model, dtype=getattr(torch, args.dtype))
    if args.format == "hf":
        folder = export_hf(loaded.model, loaded.tokenizer, args.out, loaded.chat_template, args.overwrite)
    else:
        folder = save_pretrained(loaded.model, loaded.tokenizer, args.out, loaded.chat_template, args.overwrite)
    for terms in license_files(args.model):  # a model's licence goes where the model goes
        atomic_write_bytes(Path(folder) / terms.name, terms.read_bytes())
    files = sorted(Path(folder).iterdir())
    size = sum(f.stat().st_size for f in files)
    quantized = getattr(loaded.model, "quantization", None)  # its weights are buffers: count the float model's
    params = model_size(loaded.model.config).params if quantized else loaded.model.num_params()
    kind = f", {quantized['format']} weights" if quantized else ""
    print(f"exported {loaded.name} ({params:,} parameters{kind}) to {folder} as {args.format}: "
          f"{', '.join(f.name for f in files)} ({size / 1e6:.1f} MB)")
    if loaded.tokenizer is None:
        print("note: this model has no tokenizer, so none was written")
