"""`llmscratch deploy ...`: package a model, build the container image, deploy to SageMaker, invoke, delete.

Flags come from the typed configs in llmscratch/deploy/config.py through llmscratch.config's generator (`verify`,
which takes a folder argument, has plain argparse flags).
"""

from __future__ import annotations

import argparse
import sys

from llmscratch.config import add_command, add_flags, from_args
from llmscratch.deploy.config import BuildImageConfig, DeleteConfig, InvokeConfig, PackageConfig, SageMakerConfig


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
    add_flags(q, PackageConfig, group_titles={"serving": "serving defaults (serving.json: llmscratch serve flags)"})
    q.set_defaults(func=lambda args: _package(from_args(PackageConfig, args)))

    add_verify(sub)

    add_command(sub, "build-image", BuildImageConfig, _build_image,
                help="docker build the serving image (and push it to ECR)",
                description="Build the container image from the repository's Dockerfile (torch CPU; "
                "--base-image and --torch-index-url for CUDA). With --push: create the ECR repository if "
                "needed, log in and push; prints the image URI for `deploy sagemaker --image-uri`.")

    add_command(sub, "sagemaker", SageMakerConfig, _sagemaker,
                help="create or update a SageMaker endpoint from model.tar.gz",
                description="Upload model.tar.gz to S3 (multipart, progress bar), create the SageMaker "
                "model, endpoint config and endpoint (or update an existing endpoint to the new config), "
                "optionally wait and set up autoscaling on invocations per instance.",
                epilog="Example: llmscratch deploy sagemaker --model-data model.tar.gz --image-uri "
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com/llmscratch:latest --role "
                "arn:aws:iam::123456789012:role/llmscratch-sagemaker --instance-type ml.m5.xlarge --wait")
    add_command(sub, "invoke", InvokeConfig, _invoke,
                help="send a prompt to an endpoint (optionally streaming the answer)",
                description="One request through sagemaker-runtime: InvokeEndpoint, or with --stream "
                "InvokeEndpointWithResponseStream, printing tokens as they come.")
    add_command(sub, "delete", DeleteConfig, _delete,
                help="remove an endpoint, its endpoint config, model and autoscaling target",
                description="Remove the endpoint's autoscaling target, the endpoint, its endpoint config and its "
                "model(s). The archive in S3 stays.")


def add_verify(sub) -> None:
    """The `verify` step (also what `python -m llmscratch.deploy` runs in the container)."""
    q = sub.add_parser("verify", help="check an unpacked model archive against its manifest",
                       description="Check the folder an archive was unpacked into (every file's size and sha256 "
                       "against manifest.json, no pickles). The container's entrypoint runs this before it starts "
                       "the server, so a corrupted archive fails at start-up with the reason.")
    q.add_argument("folder", help="the unpacked archive (in the container: /opt/ml/model)")
    q.add_argument("--serve-args", action="store_true",
                   help="print the `llmscratch serve` arguments the archive asks for, one per line (for the "
                   "entrypoint)")
    q.set_defaults(func=_verify)


def _package(cfg: PackageConfig) -> None:
    from llmscratch.deploy.package import package_model

    r = package_model(cfg)
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


def _build_image(cfg: BuildImageConfig) -> None:
    from llmscratch.deploy.image import build_image

    uri = build_image(cfg)
    print(f"image: {uri}")


def _sagemaker(cfg: SageMakerConfig) -> None:
    from llmscratch.deploy.sagemaker import deploy, how_to_invoke

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


def _invoke(cfg: InvokeConfig) -> None:
    from llmscratch.deploy.sagemaker import invoke, invoke_stream

    if not cfg.stream:
        print(invoke(cfg))
        return
    for piece in invoke_stream(cfg):
        sys.stdout.write(piece)
        sys.stdout.flush()
    print()


def _delete(cfg: DeleteConfig) -> None:
    from llmscratch.deploy.sagemaker import delete

    for what in delete(cfg):
        print(f"deleted {what}")
