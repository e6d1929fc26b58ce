"""`llmscratch tokenizer train|encode|decode`: our byte-level BPE from the command line."""

from __future__ import annotations

import argparse
import re
import sys

from llmscratch.utils import UserError, read_text_file


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train a byte-level BPE tokenizer, encode text to ids, decode ids to text",
        description="Byte-level BPE tokenizers (our own implementation): train one on a text file, or "
        "encode/decode with GPT-2's tokenizer, a saved tokenizer file or a Hugging Face tokenizer.json.",
    )
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="learn a BPE vocabulary from a text file and save it",
                       description="Learn byte-level BPE merges from a UTF-8 text file (split into words first "
                       "by --pre's pattern) and save the tokenizer as one JSON file (and a readable .vocab beside it). "
                       "Example: llmscratch tokenizer train --input the-verdict.txt --vocab-size 1000 -o tok.json")
    p.add_argument("--input", required=True, metavar="FILE", help="UTF-8 text file to learn from")
    p.add_argument("--vocab-size", required=True, type=int, metavar="N",
                   help="tokens in total: 256 byte tokens + merges + special tokens")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="tokenizer file to write (JSON); a readable .vocab view is written beside it")
    p.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                   help="a special token, e.g. '<|endoftext|>' (repeat for more); gets an id after the merges")
    p.add_argument("--pre", default="gpt2", choices=["gpt2", "smollm", "llama-bpe"],
                   help="pre-tokenizer that cuts text into chunks before merging (default: gpt2)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace -o (and its .vocab) even when they are not a tokenizer of ours")
    p.add_argument("--min-frequency", type=int, default=1, metavar="N",
                   help="stop when no pair occurs at least N times (default: 1)")
    p.set_defaults(func=_train)

    p = sub.add_parser("encode", help="print the token ids of a text (or only their count)",
                       description="Print the token ids of --text, --input FILE or standard input, separated by "
                       "spaces (--count: only how many). --tokenizer takes a file saved by `tokenizer train` or a "
                       "name such as gpt2. Example: llmscratch tokenizer encode --tokenizer gpt2 --text 'Hello world'")
    _tokenizer_flag(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", metavar="T", help="text to encode")
    src.add_argument("--input", metavar="FILE", help="UTF-8 file to encode (default: standard input)")
    p.add_argument("--count", action="store_true", help="print only the number of tokens")
    p.add_argument("--allow-special", action="store_true",
                   help="encode special-token strings such as <|endoftext|> as special tokens "
                   "(without this flag, text containing one is refused)")
    p.set_defaults(func=_encode)

    p = sub.add_parser("decode", help="print the text of token ids",
                       description="Print the text of token ids given with --ids or on standard input (the output "
                       "of `tokenizer encode`). Example: llmscratch tokenizer decode --tokenizer gpt2 "
                       "--ids '15496 995'")
    _tokenizer_flag(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--ids", metavar='"1 2 3"', help="token ids, separated by spaces or commas")
    src.add_argument("--input", metavar="FILE", help="file of token ids (default: standard input)")
    p.set_defaults(func=_decode)


def _tokenizer_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", default="gpt2", metavar="SPEC",
                        help="'gpt2', a tokenizer file saved by 'tokenizer train', a Hugging Face "
                        "tokenizer.json, a folder holding one (a model folder: its tokenizer), a .gguf file or a "
                        "registered model's name (the tokenizer it carries) (default: gpt2)")


def _read_text(path: str | None) -> str:
    if path is None:
        return sys.stdin.read()
    return read_text_file(path, "input", exact=True)  # as stdin: CRLF is text to encode too


def _train(args: argparse.Namespace) -> None:
    import time

    from llmscratch.tokenizer import train
    from llmscratch.tokenizer.bpe import FORMAT, vocab_view_path
    from llmscratch.utils import check_file_replaceable, check_not_input, check_output_file, json_format_of

    check_not_input([args.output, vocab_view_path(args.output)], [args.input])
    check_output_file(args.output)
    ours = json_format_of(args.output) == FORMAT  # an earlier tokenizer of ours (and its .vocab) may be replaced
    check_file_replaceable(args.output, ours, "a tokenizer file of ours", args.overwrite)
    check_file_replaceable(vocab_view_path(args.output), ours, "the .vocab of a tokenizer file of ours",
                           args.overwrite)
    text = _read_text(args.input)
    if not text:
        raise UserError(f"the input {args.input} is empty: there is nothing to learn merges from")
    start = time.perf_counter()
    try:
        tok = train(text, args.vocab_size, args.special_token, pre=args.pre,
                    min_frequency=args.min_frequency, progress=True)
    except ValueError as e:
        raise UserError(str(e), params=("min_frequency",)) from None
    seconds = time.perf_counter() - start
    tok.save(args.output)
    why = (f"no pair of tokens left occurs {args.min_frequency} or more times" if args.min_frequency > 1
           else "the text ran out of pairs")
    note = "" if tok.vocab_size == args.vocab_size else f" (asked for {args.vocab_size}: {why})"
    print(f"trained {tok.vocab_size} tokens{note}: {len(tok.merges)} merges, "
          f"{len(tok.special_tokens)} special, in {seconds:.1f} s")
    print(f"wrote {args.output} and {vocab_view_path(args.output)}")
    for word in [t for t in tok.special_tokens if t.replace("_", "").isalnum()]:
        print(f"warning: the special token {word!r} is an ordinary word: text holding it is refused by `tokenizer "
              "encode` unless --allow-special, which then cuts words around it; special tokens usually look like "
              "<|name|>", file=sys.stderr)


def _encode(args: argparse.Namespace) -> None:
    from llmscratch.tokenizer import load_tokenizer
    from llmscratch.tokenizer.bpe import DisallowedSpecialToken

    tok = load_tokenizer(args.tokenizer)
    text = args.text if args.text is not None else _read_text(args.input)
    try:
        ids = tok.encode(text, allowed_special="all" if args.allow_special else ())
    except DisallowedSpecialToken as e:
        raise UserError(f"the text contains the special token {e.token!r}: pass --allow-special to encode it as "
                        "that token (one id)") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    print(len(ids) if args.count else " ".join(map(str, ids)))


def _decode(args: argparse.Namespace) -> None:
    from llmscratch.tokenizer import load_tokenizer

    raw = args.ids if args.ids is not None else _read_text(args.input)
    try:
        ids = [int(x) for x in re.split(r"\s*,\s*|\s+", raw.strip())] if raw.strip() else []
    except ValueError:  # also an empty item between two commas ("1,,2")
        raise UserError("token ids must be integers separated by spaces or commas (one comma between two)") from None
    tok = load_tokenizer(args.tokenizer)
    try:
        text = tok.decode(ids)
    except ValueError as e:
        raise UserError(str(e)) from None
    # the text as it is (encode | decode gives the input back); a newline after it only on a terminal
    sys.stdout.write(text + ("\n" if sys.stdout.isatty() and not text.endswith("\n") else ""))
