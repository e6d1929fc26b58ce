"""Typed settings of every deploy step: the only source of the `llmscratch deploy ...` flags and their defaults.

Each field's `metadata["help"]` is its flag's help text; `metadata["flag"]` overrides the flag's name
(default: the field name with dashes) and `metadata["short"]` adds a short form.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from llmscratch.utils import UserError


def _f(default, help: str, **extra):
    """A dataclass field with its help text (and optional flag spelling) in the metadata."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ServingConfig:
    """What the endpoint's server uses when a request does not say, and its limits: written into the archive as
    serving.json. The container's entrypoint passes each on as the `llmscratch serve` flag in its metadata."""

    default_max_tokens: int = _f(256, "new tokens for a request that gives no max_new_tokens / max_tokens",
                                 serve_flag="--default-max-tokens")
    max_batch: int = _f(8, "most sequences decoded together", serve_flag="--max-batch")
    max_queue: int = _f(64, "most requests waiting; more are turned away (429, busy)", serve_flag="--max-queue")
    request_timeout: float = _f(60.0, "seconds a request may take (SageMaker cuts real-time requests at 60 s)",
                                serve_flag="--timeout")
    device: str = _f("auto", "device on the endpoint: auto (CUDA on a GPU instance with a CUDA image), cpu, cuda",
                     serve_flag="--device")
    dtype: str = _f("float32", "weight precision on the endpoint: float32, bfloat16 or float16",
                    serve_flag="--dtype")

    def validate(self) -> None:
        """Raise UserError for a setting that makes no sense."""
        for name in ("default_max_tokens", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout <= 0:
            raise UserError(f"request_timeout must be > 0, got {self.request_timeout}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise UserError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise UserError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    def serve_args(self) -> list[str]:
        """These settings as `llmscratch serve` flags."""
        return [a for f in dataclasses.fields(self) for a in (f.metadata["serve_flag"], str(getattr(self, f.name)))]


@dataclass
class PackageConfig:
    """`deploy package`: a model folder or GGUF file -> model.tar.gz for SageMaker."""

    model: str = _f(None, "our model folder, a Hugging Face folder, a .gguf file or a registered model name",
                    required=True)
    out: str = _f("model.tar.gz", "archive to write", flag="out", short="-o")
    overwrite: bool = _f(False, "replace an existing file at --out even if it is not a model archive")
    compress_level: int = _f(6, "gzip level 1 (fast) .. 9 (small); weights compress little")
    no_progress: bool = _f(False, "no progress bar")


@dataclass
class BuildImageConfig:
    """`deploy build-image`: docker build (and push to ECR)."""

    repository: str = _f(None, "image repository name (ECR repository with --push)", required=True)
    tag: str = _f("latest", "image tag")
    context: str = _f(".", "build context: the llmscratch repository root holding the Dockerfile")
    base_image: str | None = _f(None, "Docker base image (default: the Dockerfile's python slim image)")
    torch_index_url: str | None = _f(None, "pip index for torch (default: the CPU wheels; a CUDA index with a "
                                           "CUDA base image)")
    push: bool = _f(False, "log in to ECR (creating the repository if needed) and push the image")
    region: str | None = _f(None, "AWS region (default: AWS_REGION / your AWS config)")


@dataclass
class SageMakerConfig:
    """`deploy sagemaker`: upload, create (or update) model, endpoint config and endpoint, optionally autoscale."""

    model_data: str = _f(None, "model.tar.gz from `deploy package`, or its s3:// URI", required=True)
    image_uri: str = _f(None, "container image URI in ECR (from `deploy build-image --push`)", required=True)
    role: str = _f(None, "IAM role ARN SageMaker assumes (reads S3, pulls from ECR, writes logs)", required=True)
    instance_type: str = _f("ml.m5.xlarge", "SageMaker instance type")
    endpoint_name: str | None = _f(None, "endpoint name (default: llmscratch-<archive name>)")
    region: str | None = _f(None, "AWS region (default: AWS_REGION / your AWS config)")
    bucket: str | None = _f(None, "S3 bucket for a local --model-data (default: sagemaker-REGION-ACCOUNT, "
                                  "created if missing)")
    prefix: str = _f("llmscratch", "S3 key prefix for the upload")
    wait: bool = _f(False, "wait until the endpoint is InService (or failed)")
    wait_timeout: float = _f(3600.0, "seconds to wait at most")
    poll_seconds: float = _f(15.0, "seconds between status checks while waiting")
    instances: int = _f(1, "initial instance count")
    min_instances: int | None = _f(None, "autoscaling: fewest instances")
    max_instances: int | None = _f(None, "autoscaling: most instances (turns autoscaling on)")
    target_invocations: float | None = _f(None, "autoscaling: target invocations per instance per minute "
                                                "(default 20)")
    startup_timeout: int = _f(600, "seconds SageMaker gives the container to answer /ping "
                                   "(ContainerStartupHealthCheckTimeoutInSeconds)")
    download_timeout: int = _f(900, "seconds SageMaker gives the model download "
                                    "(ModelDataDownloadTimeoutInSeconds)")
    no_progress: bool = _f(False, "no progress bars")

    def validate(self) -> None:
        """Raise UserError for settings that contradict each other."""
        if self.instances < 1:
            raise UserError(f"instances must be >= 1, got {self.instances}")
        autoscale = (self.min_instances, self.max_instances, self.target_invocations)
        if any(v is not None for v in autoscale) and self.max_instances is None:
            raise UserError("autoscaling needs max_instances (with min_instances and target_invocations optional)")
        low = self.min_instances if self.min_instances is not None else 1
        if self.max_instances is not None and not 1 <= low <= self.max_instances:
            raise UserError(f"need 1 <= min_instances <= max_instances, got {low} and {self.max_instances}")
        if self.target_invocations is not None and self.target_invocations <= 0:
            raise UserError(f"target_invocations must be > 0, got {self.target_invocations}")
        for name in ("startup_timeout", "download_timeout"):
            if not 60 <= getattr(self, name) <= 3600:
                raise UserError(f"{name} must be between 60 and 3600 seconds (SageMaker's limits)")

    @property
    def autoscaling(self) -> bool:
        """True when the endpoint's variant is to be registered with Application Auto Scaling."""
        return self.max_instances is not None


@dataclass
class InvokeConfig:
    """`deploy invoke`: one request to a live endpoint."""

    endpoint_name: str = _f(None, "endpoint name", required=True)
    prompt: str = _f(None, "text to continue (or to answer, for chat models)", required=True)
    max_new_tokens: int | None = _f(None, "new tokens (default: the endpoint's)")
    temperature: float | None = _f(None, "sampling temperature (default: the endpoint's)")
    stream: bool = _f(False, "print tokens as they come (invoke_endpoint_with_response_stream)")
    region: str | None = _f(None, "AWS region (default: AWS_REGION / your AWS config)")


@dataclass
class DeleteConfig:
    """`deploy delete`: an endpoint, its endpoint config, its model(s) and its autoscaling target."""

    endpoint_name: str = _f(None, "endpoint name", required=True)
    region: str | None = _f(None, "AWS region (default: AWS_REGION / your AWS config)")
