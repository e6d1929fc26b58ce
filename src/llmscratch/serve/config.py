"""The server's settings: the only source of `llmscratch serve` flags and their defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

from llmscratch.config import check_fields, setting
from llmscratch.utils import UserError

DEFAULT_PORT = 8080
SAGEMAKER_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"  # set by SageMaker in the container
API_KEY_ENV = "LLMSCRATCH_API_KEY"
MB = 1024 * 1024


@dataclass
class ServeConfig:
    """How `llmscratch serve` runs: which model, where it listens, and its limits (the command's flags)."""

    model: str | None = setting(None, "registered name (see `llmscratch models list`), model folder, Hugging Face "
                                "folder, .gguf file, or preset (random weights)", required=True)
    host: str = setting("127.0.0.1", "address to listen on (127.0.0.1: this machine only; 0.0.0.0 for every "
                        "interface, e.g. in a container)")
    port: int | None = setting(None, f"port (default: ${SAGEMAKER_PORT_ENV} when set, else {DEFAULT_PORT})",
                               ge=0, le=65535)
    api_key: str | None = setting(None, f"require this key as 'Authorization: Bearer KEY' on /v1 routes (default: "
                                  f"${API_KEY_ENV} when set, else no key)")
    batching: bool = setting(True, "one request at a time (for comparison)", switches={"--no-batching": False})
    max_batch: int = setting(8, "most sequences decoded together", ge=1)
    max_len: int | None = setting(None, "most tokens per sequence, prompt + new (default: the model's context "
                                  "length, at most 2048); the KV cache holds max-batch x max-len slots", ge=2)
    max_queue: int = setting(64, "most requests waiting; past it: 429 with Retry-After", ge=1)
    request_timeout: float = setting(60.0, "seconds a request may take before it is cut (SageMaker's limit)",
                                     flag="--timeout", gt=0)
    max_body_mb: float = setting(6.0, "largest request body in MB; larger: 413 (SageMaker's limit)", gt=0)
    max_n: int = setting(4, "most choices per request (OpenAI's n)", ge=1)
    default_max_tokens: int = setting(256, "new tokens when a request does not say (less when the context is "
                                      "shorter)", ge=1)
    chat_template: str | None = setting(None, "a jinja2 chat template file to use instead of the model's own",
                                        metavar="FILE")
    device: str = setting("cpu", "cpu, cuda, mps or auto")
    dtype: str = setting("float32", "weight precision", choices=("float32", "bfloat16", "float16"))
    quantize: str | None = setting(None, "int8 or int4 weights for every block Linear and the head (faster CPU "
                                   "decoding; docs/quant.md); gguf: a .gguf file's own quantized blocks kept",
                                   choices=("int8", "int4", "gguf"))
    drain_timeout: float = setting(60.0, "on SIGTERM: most seconds to wait for the requests in flight", gt=0)
    log_level: str = setting("info", "server log level",
                             choices=("critical", "error", "warning", "info", "debug"))

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self) -> None:
        """Raise UserError for a setting that cannot work (ranges are checked as values come in)."""
        check_fields(self)
        if not self.model:
            raise UserError("no model given: name one (a registered name, folder, .gguf file or preset)")
        if self.quantize and self.dtype != "float32":
            raise UserError(f"quantize={self.quantize} runs with float32 activations: use dtype=float32, the "
                            "default", params=("quantize", "dtype"))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * MB)

    def resolved_port(self) -> int:
        """The port to listen on: `port`, else $SAGEMAKER_BIND_TO_PORT, else 8080."""
        if self.port is not None:
            return self.port
        env = os.environ.get(SAGEMAKER_PORT_ENV)
        if not env:
            return DEFAULT_PORT
        try:
            port = int(env)
        except ValueError:
            raise UserError(f"{SAGEMAKER_PORT_ENV}={env!r} is not a port number") from None
        if not 0 <= port <= 65535:
            raise UserError(f"{SAGEMAKER_PORT_ENV}={env!r} is not a port number")
        return port

    def resolved_api_key(self) -> str | None:
        """The API key /v1 routes require: `api_key`, else $LLMSCRATCH_API_KEY, else None (no key)."""
        return self.api_key or os.environ.get(API_KEY_ENV) or None
