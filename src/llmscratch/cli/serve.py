"""`llmscratch serve`: an HTTP server for a model (OpenAI-compatible /v1 routes, SageMaker's /ping and
/invocations, a chat page at /). Its flags are the fields of `llmscratch.serve.config.ServeConfig`."""

from __future__ import annotations

import sys

from llmscratch.config import add_command
from llmscratch.serve.config import ServeConfig


def register(subparsers) -> None:
    add_command(
        subparsers, "serve", ServeConfig, serve,
        help="serve a model over HTTP (OpenAI-compatible API, SageMaker container routes, a chat page)",
        description="Serve --model over HTTP: POST /v1/chat/completions, /v1/completions, GET /v1/models (OpenAI's "
        "API: point any OpenAI client at http://HOST:PORT/v1), GET /ping and POST /invocations (the SageMaker "
        "container contract; Hugging Face {'inputs': ...} bodies or OpenAI ones), and a chat page at /. "
        "Concurrent requests are decoded together (continuous batching); past the queue, 429 with Retry-After. "
        "SIGTERM finishes the requests in flight, answering 503 to new ones, then exits. See docs/serve.md.",
    )


def serve(config: ServeConfig) -> None:
    """Listen, load the model in the background, serve until SIGTERM or Ctrl-C."""

    from llmscratch.serve.server import bound_socket, build_server
    from llmscratch.utils import UserError, read_text_file
    from llmscratch.weights import check_model_name

    config.validate()
    check_model_name(config.model)  # a typo is one line, before the server starts
    if config.chat_template:
        if not read_text_file(config.chat_template, "chat template").strip():  # before the model loads
            raise UserError(f"the chat template {config.chat_template} is empty")
    port = config.resolved_port()
    try:
        sock = bound_socket(config.host, port)
    except OSError as e:
        raise UserError(f"cannot listen on {config.host}:{port}: {e.strerror or e}") from None
    errors: list[BaseException] = []
    server = build_server(config, on_load_error=errors.append)
    print(f"llmscratch serve: loading {config.model}; listening on http://{config.host}:{port} (chat page at /, "
          f"OpenAI API at /v1)", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if errors:
        e = errors[0]
        if isinstance(e, UserError):
            raise e
        raise UserError(f"the model could not be loaded: {type(e).__name__}: {e}")
