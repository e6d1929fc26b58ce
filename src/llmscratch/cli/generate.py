"""`llmscratch generate`: continue a prompt with any model (registered, folder, GGUF, Hub id or preset)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate text from a prompt",
        description="Continue --prompt with a model. --model takes a registered name (see `llmscratch models "
        "list`), one of our model folders, a Hugging Face model folder, a .gguf file, a Hugging Face Hub id, or a "
        "preset name (random weights: the text is gibberish, useful for speed tests). Prints the generated text "
        "(without the prompt) and, on stderr, a one-line summary (tokens, tokens/s).",
    )
    p.add_argument("--model", required=True, help="model name or path (see above)")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="most tokens to generate (default 50, or what the model's context leaves after the prompt "
                   "when that is less)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 (default) picks the most likely token every time (greedy)")
    p.add_argument("--top-k", type=int, default=None, help="sample only among the K most likely tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample only among the most likely tokens whose probabilities add up to P (0 < P <= 1)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="make tokens already in the prompt or the answer R times less likely (a logit above 0 is "
                   "divided by R, one below multiplied; as transformers' repetition_penalty): 1 (default) is none, "
                   "1.1-1.3 curbs loops")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable); generation also stops at the end-of-text token")
    p.add_argument("--no-kv-cache", action="store_true",
                   help="recompute the whole sequence for every token (slow; for comparison)")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="weight precision (default float32)")
    p.add_argument("--quantize", choices=["int8", "int4", "gguf"], default=None,
                   help="int8 or int4 weights for every block Linear and the head, multiplied by our kernel "
                   "(faster CPU decoding); gguf: a .gguf file's own quantized blocks kept as they are, no float "
                   "copy (see docs/quant.md)")
    p.add_argument("--compile", action="store_true",
                   help="run decode steps through torch.compile: the first step compiles (a minute or more), later "
                   "ones are faster (see docs/engine.md, per-step overhead)")
    p.set_defaults(func=_generate)


DEFAULT_NEW_TOKENS = 50


def _generate(args: argparse.Namespace) -> None:
    import dataclasses

    import torch

    from llmscratch.generate import GenerationStats, SamplingConfig, compile_decoding, generate_text, stream_text
    from llmscratch.model.quant_kernel import HUGE_PAGES_MIN_TOKENS, prepare_decoding
    from llmscratch.tokenizer import encode_prompt
    from llmscratch.utils import UserError, pick_device, plural
    from llmscratch.weights import load_model

    cfg = SamplingConfig(
        max_new_tokens=DEFAULT_NEW_TOKENS if args.max_new_tokens is None else args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        stop_strings=tuple(args.stop), repetition_penalty=args.repetition_penalty,
    )
    cfg.validate()
    if not args.prompt:
        raise UserError("the prompt is empty; give some text to continue")
    device = pick_device(args.device)
    loaded = load_model(args.model, device=device, dtype=getattr(torch, args.dtype), quantize=args.quantize)
    prepare_decoding(device, loaded.model, huge_pages=cfg.max_new_tokens >= HUGE_PAGES_MIN_TOKENS)
    if args.compile:
        compile_decoding(loaded.model)
    if loaded.random_weights:
        print(f"warning: {loaded.name} is a preset with random weights (not trained): expect gibberish",
              file=sys.stderr)
    tok = loaded.tokenizer
    if tok is None:
        raise UserError(f"model {args.model!r} has no tokenizer, so it cannot read a text prompt")
    if args.max_new_tokens is None:  # the default: no more than the context leaves (a small trained model's)
        room = loaded.model.config.context_length - len(encode_prompt(tok, args.prompt))
        if 0 < room < cfg.max_new_tokens:
            cfg = dataclasses.replace(cfg, max_new_tokens=room)
            print(f"note: at most {room} new tokens: the model's context holds "
                  f"{loaded.model.config.context_length} tokens (--max-new-tokens sets it)", file=sys.stderr)
    use_cache = not args.no_kv_cache
    stats = GenerationStats()
    if args.stream:
        ids = encode_prompt(tok, args.prompt)
        text = ""
        for piece in stream_text(loaded.model, tok, ids, cfg, use_cache, stats):
            print(piece, end="", flush=True)
            text += piece
        print()
    else:
        text = generate_text(loaded.model, tok, args.prompt, cfg, use_cache, stats)[0]
        print(text)
    print(
        f"{plural(stats.new_tokens, 'token')} in {stats.seconds:.2f} s ({stats.tokens_per_second:.1f} tokens/s; "
        f"prompt {plural(stats.prompt_tokens, 'token')}, first token after {stats.first_token_seconds:.2f} s; KV cache "
        f"{'on' if use_cache else 'off'}; {loaded.name} on {next(loaded.model.parameters()).device})",
        file=sys.stderr,
    )
    if not text.strip() and cfg.max_new_tokens > 0 and loaded.chat_template:
        print(f"note: the model ended the text at once. `generate` continues the prompt as plain text; a chat model "
              f"answers in its chat format: llmscratch chat --model {args.model}", file=sys.stderr)
