"""`llmscratch deploy ...`: package a model, build the container image, deploy to SageMaker, invoke, delete.

Flags come from the typed configs in llmscratch/deploy/config.py (a field = a flag, its metadata = the help).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

from llmscratch.deploy.config import (
    BuildImageConfig,
    DeleteConfig,
    InvokeConfig,
    PackageConfig,
    SageMakerConfig,
    ServingConfig,
)


def _flag_type(hint):
    """(python type, optional) of a field's type hint: int, float, str or bool, possibly `| None`."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field of the dataclass `cls`: --field-name (bool: a switch), help and default from the field."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        names = [meta.get("short")] if meta.get("short") else []
        names.append("--" + meta.get("flag", f.name).replace("_", "-"))
        typ, _ = _flag_type(hints[f.name])
        help_text = meta.get("help", "")
        if typ is bool:
            parser.add_argument(*names, dest=f.name, action="store_true", help=help_text)
            continue
        required = bool(meta.get("required"))
        shown = "" if required or f.default is None else f" (default: {f.default})"
        parser.add_argument(*names, dest=f.name, type=typ, default=f.default, required=required,
                            metavar={int: "N", float: "X"}.get(typ, f.name.upper()), help=help_text + shown)


def config_from_args(cls, args: argparse.Namespace):
    """The dataclass `cls` filled from the parsed flags."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "deploy",
        help="package a model and deploy it to an AWS SageMaker endpoint",
        description="From a model folder to a live SageMaker endpoint: package -> build-image -> sagemaker -> "
        "invoke -> delete. AWS credentials and region come from the usual places (environment, ~/.aws, an "
        "instance role); AWS_ENDPOINT_URL points every call at a local stand-in. See docs/deploy.md.",
    )
    sub = p.add_subparsers(dest="deploy_command", metavar="STEP", required=True)

    q = sub.add_parser("package", help="write model.tar.gz: the model, serving.json and a manifest of sha256 sums",
                       description="Pack a model for SageMaker (which unpacks it into /opt/ml/model): our model "
                       "folder or a Hugging Face folder at the archive's top level, or a .gguf file as is; "
                       "serving.json with the server's defaults and limits; manifest.json with every file's "
                       "sha256, checked when the container starts. Pickled files are refused.",
                       epilog="Example: llmscratch deploy package --model runs/sft/final -o model.tar.gz")
    add_config_flags(q, PackageConfig)
    add_config_flags(q.add_argument_group("serving defaults (serving.json)"), ServingConfig)
    q.set_defaults(func=_package)

    q = sub.add_parser("verify", help="check an unpacked model archive against its manifest",
                       description="Check the folder an archive was unpacked into (every file's size and sha256 "
                       "against manifest.json, no pickles). The container's entrypoint runs this before it starts "
                       "the server, so a corrupted archive fails at start-up with the reason.")
    q.add_argument("folder", help="the unpacked archive (in the container: /opt/ml/model)")
    q.add_argument("--serve-args", action="store_true",
                   help="print the `llmscratch serve` arguments the archive asks for, one per line (for the "
                   "entrypoint)")
    q.set_defaults(func=_verify)

    q = sub.add_parser("build-image", help="docker build the serving image (and push it to ECR)",
                       description="Build the container image from the repository's Dockerfile (torch CPU; "
                       "--base-image and --torch-index-url for CUDA). With --push: create the ECR repository if "
                       "needed, log in and push; prints the image URI for `deploy sagemaker --image-uri`.")
    add_config_flags(q, BuildImageConfig)
    q.set_defaults(func=_build_image)

    q = sub.add_parser("sagemaker", help="create or update a SageMaker endpoint from model.tar.gz",
                       description="Upload model.tar.gz to S3 (multipart, progress bar), create the SageMaker "
                       "model, endpoint config and endpoint (or update an existing endpoint to the new config), "
                       "optionally wait and set up autoscaling on invocations per instance.",
                       epilog="Example: llmscratch deploy sagemaker --model-data model.tar.gz --image-uri "
                       "123456789012.dkr.ecr.eu-west-1.amazonaws.com/llmscratch:latest --role "
                       "arn:aws:iam::123456789012:role/llmscratch-sagemaker --instance-type ml.m5.xlarge --wait")
    add_config_flags(q, SageMakerConfig)
    q.set_defaults(func=_sagemaker)

    q = sub.add_parser("invoke", help="send a prompt to an endpoint (optionally streaming the answer)")
    add_config_flags(q, InvokeConfig)
    q.set_defaults(func=_invoke)

    q = sub.add_parser("delete", help="remove an endpoint, its endpoint config, model and autoscaling target")
    add_config_flags(q, DeleteConfig)
    q.set_defaults(func=_delete)


def _package(args: argparse.Namespace) -> None:
    from llmscratch.deploy.package import package_model

    r = package_model(config_from_args(PackageConfig, args), config_from_args(ServingConfig, args))
    what = "the model folder" if r.model == "." else r.model
    print(f"wrote {r.path} ({r.size / 1e6:.1f} MB, {len(r.files)} files: {what}, serving.json; manifest.json) in "
          f"{r.seconds:.1f} s")


def _verify(args: argparse.Namespace) -> None:
    from llmscratch.deploy.package import serve_args, verify_model_dir

    if args.serve_args:
        print("\n".join(serve_args(args.folder)))
        return
    model = verify_model_dir(args.folder)
    print(f"{args.folder}: every file matches manifest.json; model: {model}")


def _build_image(args: argparse.Namespace) -> None:
    from llmscratch.deploy.image import build_image

    uri = build_image(config_from_args(BuildImageConfig, args))
    print(f"image: {uri}")


def _sagemaker(args: argparse.Namespace) -> None:
    from llmscratch.deploy.sagemaker import deploy, how_to_invoke

    cfg = config_from_args(SageMakerConfig, args)
    r = deploy(cfg)
    print(f"model data: {r.model_data}")
    print(f"endpoint: {r.endpoint_name} ({r.status}; model {r.model_name}, config {r.config_name})")
    if r.autoscaling:
        a = r.autoscaling
        print(f"autoscaling: {a['min']}..{a['max']} instances, target {a['target_invocations_per_minute']:g} "
              "invocations per instance per minute")
    if r.removed:
        print(f"removed the previous {', '.join(r.removed)}")
    elif r.previous_config:
        print(f"the previous endpoint config {r.previous_config} and its model stay (deploy with --wait to remove "
              "them once the update is done)")
    if r.status != "InService":
        print(f"not in service yet: `aws sagemaker wait endpoint-in-service --endpoint-name {r.endpoint_name}` "
              "or deploy with --wait")
    for line in how_to_invoke(r.endpoint_name, cfg.region):
        print(line)


def _invoke(args: argparse.Namespace) -> None:
    from llmscratch.deploy.sagemaker import invoke, invoke_stream

    cfg = config_from_args(InvokeConfig, args)
    if not cfg.stream:
        print(invoke(cfg))
        return
    for piece in invoke_stream(cfg):
        sys.stdout.write(piece)
        sys.stdout.flush()
    print()


def _delete(args: argparse.Namespace) -> None:
    from llmscratch.deploy.sagemaker import delete

    for what in delete(config_from_args(DeleteConfig, args)):
        print(f"deleted {what}")
