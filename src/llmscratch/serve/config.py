"""The server's settings: the only source of `llmscratch serve` flags and their defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass

from llmscratch.utils import UserError

DEFAULT_PORT = 8080
SAGEMAKER_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"  # set by SageMaker in the container
API_KEY_ENV = "LLMSCRATCH_API_KEY"
MB = 1024 * 1024


@dataclass
class ServeConfig:
    """How `llmscratch serve` runs: which model, where it listens, and its limits."""

    model: str = ""  # a registered name, model folder, Hugging Face folder, .gguf file or preset
    host: str = "127.0.0.1"  # loopback only unless told otherwise
    port: int | None = None  # None: $SAGEMAKER_BIND_TO_PORT when set, else 8080
    api_key: str | None = None  # None: $LLMSCRATCH_API_KEY when set, else no key (open /v1 routes)
    batching: bool = True  # False: one request at a time (the "batching off" of `bench serve`)
    max_batch: int = 8  # sequences decoded together
    max_queue: int = 64  # requests waiting for a row; past it: 429 with Retry-After
    request_timeout: float = 60.0  # seconds a request may take (SageMaker cuts at 60 s)
    max_body_mb: float = 6.0  # SageMaker's real-time payload limit; larger bodies: 413
    max_n: int = 4  # most choices per request (OpenAI `n`)
    default_max_tokens: int = 256  # when a request gives no max_tokens (less when the context is shorter)
    chat_template: str | None = None  # a jinja2 file to use instead of the model's own template
    device: str = "cpu"
    dtype: str = "float32"
    drain_timeout: float = 60.0  # on SIGTERM: most seconds to wait for requests in flight

    def validate(self) -> None:
        """Raise UserError for a setting that cannot work."""
        if not self.model:
            raise UserError("no model given: name one (a registered name, folder, .gguf file or preset)")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise UserError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_batch", "max_queue", "max_n", "default_max_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout", "max_body_mb", "drain_timeout"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be > 0, got {getattr(self, name)}")

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
