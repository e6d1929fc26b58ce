"""`llmscratch serve`: an HTTP server for a model (OpenAI-compatible /v1 routes, SageMaker's /ping and
/invocations, a chat page at /)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    from llmscratch.serve.config import API_KEY_ENV, ServeConfig

    d = ServeConfig()
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (OpenAI-compatible API, SageMaker container routes, a chat page)",
        description="Serve --model over HTTP: POST /v1/chat/completions, /v1/completions, GET /v1/models (OpenAI's "
        "API: point any OpenAI client at http://HOST:PORT/v1), GET /ping and POST /invocations (the SageMaker "
        "container contract; Hugging Face {'inputs': ...} bodies or OpenAI ones), and a chat page at /. "
        "Concurrent requests are decoded together (continuous batching); past the queue, 429 with Retry-After. "
        "SIGTERM finishes the requests in flight, answering 503 to new ones, then exits. See docs/serve.md.",
    )
    p.add_argument("--model", required=True,
                   help="registered name (see `llmscratch models list`), model folder, Hugging Face folder, .gguf "
                   "file, or preset (random weights)")
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}: this machine only; "
                   "0.0.0.0 for every interface, e.g. in a container)")
    p.add_argument("--port", type=int, default=None,
                   help="port (default: $SAGEMAKER_BIND_TO_PORT when set, else 8080)")
    p.add_argument("--api-key", default=None,
                   help=f"require this key as 'Authorization: Bearer KEY' on /v1 routes (default: ${API_KEY_ENV} "
                   "when set, else no key)")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"most sequences decoded together (default {d.max_batch})")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help=f"most requests waiting; past it: 429 with Retry-After (default {d.max_queue})")
    p.add_argument("--no-batching", action="store_true", help="one request at a time (for comparison)")
    p.add_argument("--timeout", type=float, default=d.request_timeout,
                   help=f"seconds a request may take before it is cut (default {d.request_timeout:g}, SageMaker's)")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_mb,
                   help=f"largest request body in MB; larger: 413 (default {d.max_body_mb:g}, SageMaker's)")
    p.add_argument("--max-n", type=int, default=d.max_n, help=f"most choices per request, `n` (default {d.max_n})")
    p.add_argument("--default-max-tokens", type=int, default=d.default_max_tokens,
                   help=f"new tokens when a request does not say (default {d.default_max_tokens}, less when the "
                   "context is shorter)")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="a jinja2 chat template to use instead of the model's own")
    p.add_argument("--device", default=d.device, help=f"cpu, cuda, mps or auto (default {d.device})")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=d.dtype,
                   help=f"weight precision (default {d.dtype})")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default info)")
    p.set_defaults(func=_serve)


def config_from_args(args: argparse.Namespace):
    """The ServeConfig the flags describe."""
    from llmscratch.serve.config import ServeConfig

    return ServeConfig(
        model=args.model, host=args.host, port=args.port, api_key=args.api_key, batching=not args.no_batching,
        max_batch=args.max_batch, max_queue=args.max_queue, request_timeout=args.timeout,
        max_body_mb=args.max_body_mb, max_n=args.max_n, default_max_tokens=args.default_max_tokens,
        chat_template=args.chat_template, device=args.device, dtype=args.dtype,
    )


def _serve(args: argparse.Namespace) -> None:
    from pathlib import Path

    from llmscratch.serve.server import bound_socket, build_server
    from llmscratch.utils import UserError

    config = config_from_args(args)
    config.validate()
    if config.chat_template and not Path(config.chat_template).is_file():
        raise UserError(f"chat template file not found: {config.chat_template}")
    port = config.resolved_port()
    try:
        sock = bound_socket(config.host, port)
    except OSError as e:
        raise UserError(f"cannot listen on {config.host}:{port}: {e.strerror or e}") from None
    errors: list[BaseException] = []
    server = build_server(config, on_load_error=errors.append, log_level=args.log_level)
    print(f"llmscratch serve: loading {config.model}; listening on http://{config.host}:{port} (chat page at /, "
          f"OpenAI API at /v1)", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    if errors:
        e = errors[0]
        if isinstance(e, UserError):
            raise e
        raise UserError(f"the model could not be loaded: {type(e).__name__}: {e}")
