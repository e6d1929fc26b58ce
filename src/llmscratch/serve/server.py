"""Running the app with uvicorn: graceful shutdown on SIGTERM (requests in flight finish, new ones get 503)."""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from llmscratch.serve.app import ServerState, create_app
from llmscratch.serve.config import ServeConfig

log = logging.getLogger("llmscratch.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, but SIGTERM drains first: the app answers 503 to new requests while those in flight
    finish (at most `drain_timeout` seconds), then the server stops and the process exits normally."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout: float):
        super().__init__(config)
        self.state, self.drain_timeout = state, drain_timeout

    def handle_exit(self, sig: int, frame: Any) -> None:
        if sig == signal.SIGTERM:
            self.drain()
        else:
            super().handle_exit(sig, frame)

    def drain(self) -> None:
        """Stop taking requests, let those in flight finish, then stop (returns at once; the work is a thread's)."""
        if self.state.draining:
            return
        self.state.draining = True
        log.info("SIGTERM: finishing %d request(s) in flight, refusing new ones", self.state.inflight)
        threading.Thread(target=self._exit_when_idle, name="llmscratch-drain", daemon=True).start()

    def _exit_when_idle(self) -> None:
        end = time.monotonic() + self.drain_timeout
        while self.state.inflight > 0 and time.monotonic() < end:
            time.sleep(0.05)
        self.should_exit = True


def build_server(config: ServeConfig, loader: Callable[[], Any] | None = None,
                 on_load_error: Callable[[BaseException], None] | None = None) -> DrainingServer:
    """The server for `config` (not started). A loading failure stops it (see `DrainingServer.load_error`)."""
    config.validate()
    server: DrainingServer | None = None

    def failed(e: BaseException) -> None:
        if on_load_error is not None:
            on_load_error(e)
        if server is not None:
            server.should_exit = True

    app = create_app(config, loader, failed)
    uv = uvicorn.Config(app, host=config.host, port=config.resolved_port(), log_level=config.log_level,
                        timeout_graceful_shutdown=5, timeout_keep_alive=5, access_log=False)
    server = DrainingServer(uv, app.state.serve, config.drain_timeout)
    return server


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free port; read it from getsockname())."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock
