"""`llmscratch data ...`: list, fetch and locate registry data sets; tokenize a corpus into a token file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="list, fetch and tokenize data sets",
        description="Data sets of the registry (checksummed; fetched from the cache, the folder in "
        "$LLMSCRATCH_DATA_MIRROR, or their canonical URL) and corpus tokenization.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="list the registry's data sets and whether they are cached")
    p.set_defaults(func=_list)

    p = sub.add_parser("fetch", help="fetch a data set (cache, mirror or download) and print its path")
    p.add_argument("name", help="data set name (see `llmscratch data list`)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_fetch)

    p = sub.add_parser("path", help="print where a data set is (or will be) cached, without fetching it")
    p.add_argument("name", help="data set name")
    p.set_defaults(func=_path)

    p = sub.add_parser(
        "tokenize",
        help="encode a text corpus into a token file (tokens.bin + tokens.bin.json)",
        description="Stream a UTF-8 text corpus through a tokenizer into a flat uint16/uint32 token file that "
        "training reads through a memory map. The corpus is a registry name (e.g. the-verdict) or a file.",
    )
    p.add_argument("corpus", help="registry data set name or path of a UTF-8 text file")
    p.add_argument("-o", "--output", required=True, type=Path, help="token file to write, e.g. tokens.bin")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2' or a tokenizer file (default: gpt2)")
    p.add_argument("--chunk-chars", type=int, default=1 << 22,
                   help="characters read and tokenized at a time (default: 4,194,304, about 4 MiB of ASCII)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="replace -o (and its .json header) even when they are not a token file of ours")
    p.set_defaults(func=_tokenize)


def _list(args: argparse.Namespace) -> None:
    from llmscratch.data.registry import is_cached, list_datasets

    rows = [(d.name, "cached" if is_cached(d.name) else "-", d.license, d.description) for d in list_datasets()]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")


def _fetch(args: argparse.Namespace) -> None:
    from llmscratch.data.registry import fetch

    print(fetch(args.name, progress=not args.quiet))


def _path(args: argparse.Namespace) -> None:
    from llmscratch.data.registry import path

    print(path(args.name))


def _tokenize(args: argparse.Namespace) -> None:
    from llmscratch.data.pretrain import TOKEN_FILE_FORMAT, header_path, tokenize_corpus
    from llmscratch.data.registry import DATASETS, fetch
    from llmscratch.tokenizer import load_tokenizer
    from llmscratch.utils import UserError, check_file_replaceable, check_not_input, json_format_of

    if args.corpus in DATASETS:
        info = DATASETS[args.corpus]
        if info.kind != "text":
            raise UserError(f"data set {info.name!r} is {info.kind} data, not a text corpus")
        corpus = fetch(args.corpus, progress=not args.quiet)
    else:
        corpus = Path(args.corpus)
        if not corpus.is_file():
            raise UserError(f"{args.corpus} is neither a data set name nor a file (data sets: {', '.join(DATASETS)})")
    check_not_input([args.output, header_path(args.output)], [corpus])  # this one first: it says more
    ours = json_format_of(header_path(args.output)) == TOKEN_FILE_FORMAT  # an earlier token file may be replaced
    check_file_replaceable(args.output, ours, "a token file of ours (no token file header beside it)", args.overwrite)
    check_file_replaceable(header_path(args.output), ours, "a token file header of ours", args.overwrite)
    t0 = time.perf_counter()
    spec = str(Path(args.tokenizer).resolve()) if Path(args.tokenizer).exists() else args.tokenizer
    header = tokenize_corpus(
        corpus, args.output, load_tokenizer(args.tokenizer), spec=spec, chunk_chars=args.chunk_chars,
        progress=not args.quiet,
    )
    seconds = time.perf_counter() - t0
    print(
        f"{args.output}: {header.count:,} tokens ({header.dtype}) from {header.source['bytes']:,} bytes of "
        f"{corpus.name}, tokenizer {header.tokenizer['spec']}, {seconds:.2f} s"
    )
