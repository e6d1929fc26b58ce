"""Typed settings of every deploy step: the only source of the `llmscratch deploy ...` flags, their `--config`
keys and defaults (through llmscratch.config's generator)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from llmscratch.config import check_fields, nested, setting
from llmscratch.utils import UserError

REGION_HELP = "AWS region (default: AWS_REGION, AWS_DEFAULT_REGION or your AWS config)"


@dataclass
class ServingConfig:
    """What the endpoint's server uses when a request does not say, and its limits: written into the archive as
    serving.json. Each key is the `llmscratch serve` flag of the same name, which the container passes on."""

    default_max_tokens: int = setting(256, "new tokens for a request that gives no max_new_tokens / max_tokens",
                                      ge=1)
    max_batch: int = setting(8, "most sequences decoded together", ge=1)
    max_queue: int = setting(64, "most requests waiting; more are turned away (429, busy)", ge=1)
    timeout: float = setting(60.0, "seconds a request may take (SageMaker cuts real-time requests at 60 s)", gt=0)
    device: str = setting("auto", "device on the endpoint: auto (CUDA on a GPU instance with a CUDA image), cpu or "
                          "cuda",
                          choices=("auto", "cpu", "cuda"))
    dtype: str = setting("float32", "weight precision on the endpoint: float32, bfloat16 or float16",
                         choices=("float32", "bfloat16", "float16"))

    def __post_init__(self) -> None:
        check_fields(self)

    def serve_args(self) -> list[str]:
        """These settings as `llmscratch serve` flags."""
        flags = [(f"--{f.name.replace('_', '-')}", str(getattr(self, f.name))) for f in dataclasses.fields(self)]
        return [part for flag in flags for part in flag]


@dataclass
class PackageConfig:
    """`deploy package`: a model folder or GGUF file -> model.tar.gz for SageMaker."""

    model: str | None = setting(None, "our model folder, a Hugging Face folder, a .gguf file or a registered model "
                                "name", required=True)
    out: str = setting("model.tar.gz", "archive to write", flag="--out", aliases=("-o",))
    overwrite: bool = setting(False, "replace an existing file at --out even if it is not a model archive")
    compress_level: int = setting(6, "gzip level 1 (fast) .. 9 (small); weights compress little", ge=1, le=9)
    progress: bool = setting(True, "no progress bar", switches={"--no-progress": False})
    serving: ServingConfig = nested(ServingConfig, flags=tuple(f.name for f in dataclasses.fields(ServingConfig)))

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class BuildImageConfig:
    """`deploy build-image`: docker build (and push to ECR)."""

    repository: str | None = setting(None, "image repository name (the ECR repository with --push)", required=True)
    tag: str = setting("latest", "image tag")
    context: str = setting(".", "build context: the llmscratch repository root holding the Dockerfile")
    base_image: str | None = setting(None, "Docker base image (default: the Dockerfile's Python slim image; a CUDA "
                                     "image for GPU instances)")
    torch_index_url: str | None = setting(None, "pip index for torch (default: the CPU wheels; the matching CUDA "
                                          "index with a CUDA base image)")
    push: bool = setting(False, "create the ECR repository if needed, log in and push the image")
    region: str | None = setting(None, REGION_HELP)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class SageMakerConfig:
    """`deploy sagemaker`: upload, create (or update) model, endpoint config and endpoint, optionally autoscale."""

    model_data: str | None = setting(None, "model.tar.gz from `deploy package`, or its s3:// URI", required=True)
    image_uri: str | None = setting(None, "container image URI in ECR (from `deploy build-image --push`)",
                                    required=True)
    role: str | None = setting(None, "IAM role ARN SageMaker assumes (reads the model from S3, pulls the image, "
                               "writes logs)", required=True)
    instance_type: str = setting("ml.m5.xlarge", "SageMaker instance type (docs/deploy.md: which fits which model)")
    endpoint_name: str | None = setting(None, "endpoint name (default: llmscratch-<archive name>)")
    region: str | None = setting(None, REGION_HELP)
    bucket: str | None = setting(None, "S3 bucket for a local --model-data (default: sagemaker-REGION-ACCOUNT, "
                                 "created if missing)")
    prefix: str = setting("llmscratch", "S3 key prefix for the upload")
    wait: bool = setting(False, "wait until the endpoint is InService (or failed), showing its status")
    wait_timeout: float = setting(3600.0, "seconds to wait at most", gt=0)
    poll_seconds: float = setting(15.0, "seconds between status checks while waiting", ge=0)
    instances: int = setting(1, "initial instance count", ge=1)
    min_instances: int | None = setting(None, "autoscaling: fewest instances (default 1)", ge=1)
    max_instances: int | None = setting(None, "autoscaling: most instances (turns autoscaling on; implies --wait)",
                                        ge=1)
    target_invocations: float | None = setting(None, "autoscaling: target invocations per instance per minute "
                                               "(default 20)", gt=0)
    startup_timeout: int = setting(600, "seconds SageMaker gives the container to answer /ping "
                                   "(ContainerStartupHealthCheckTimeoutInSeconds)", ge=60, le=3600)
    download_timeout: int = setting(900, "seconds SageMaker gives the model download "
                                    "(ModelDataDownloadTimeoutInSeconds)", ge=60, le=3600)
    progress: bool = setting(True, "no progress bars", switches={"--no-progress": False})

    def __post_init__(self) -> None:
        check_fields(self)
        if not re.fullmatch(r"ml\.[a-z0-9-]+\.[a-z0-9-]+", self.instance_type or ""):
            raise UserError(f"instance_type {self.instance_type!r} is not a SageMaker instance type: they look like "
                            "ml.m5.xlarge or ml.g5.2xlarge", params="instance_type")
        if self.max_instances is None and (self.min_instances is not None or self.target_invocations is not None):
            raise UserError("autoscaling needs max_instances; min_instances and target_invocations are optional",
                            params=("max_instances", "min_instances", "target_invocations"))
        low = self.min_instances if self.min_instances is not None else 1
        if self.max_instances is not None and low > self.max_instances:
            raise UserError(f"min_instances ({low}) must be <= max_instances ({self.max_instances})",
                            params=("min_instances", "max_instances"))

    @property
    def autoscaling(self) -> bool:
        """True when the endpoint's variant is to be registered with Application Auto Scaling."""
        return self.max_instances is not None


@dataclass
class InvokeConfig:
    """`deploy invoke`: one request to a live endpoint."""

    endpoint_name: str | None = setting(None, "endpoint name", required=True)
    prompt: str | None = setting(None, "text to continue (or to answer, for chat models)", required=True)
    max_new_tokens: int | None = setting(None, "new tokens (default: the endpoint's)", ge=1)
    temperature: float | None = setting(None, "sampling temperature, 0 for greedy (default: the endpoint's)", ge=0)
    stream: bool = setting(False, "print tokens as they come (InvokeEndpointWithResponseStream)")
    chat: bool = setting(False, "send the prompt as a user message of a chat (OpenAI's messages, rendered with the "
                         "model's chat template: what instruction-tuned models answer); without it the prompt is "
                         "continued as plain text")
    region: str | None = setting(None, REGION_HELP)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.prompt is not None and not self.prompt.strip():
            raise UserError("prompt is empty: give some text to send", params="prompt")
        if self.endpoint_name is not None:
            from llmscratch.deploy.sagemaker import check_endpoint_name

            check_endpoint_name(self.endpoint_name)


@dataclass
class DeleteConfig:
    """`deploy delete`: an endpoint, its endpoint config, its model(s) and its autoscaling target."""

    endpoint_name: str | None = setting(None, "endpoint name", required=True)
    region: str | None = setting(None, REGION_HELP)

    def __post_init__(self) -> None:
        check_fields(self)
