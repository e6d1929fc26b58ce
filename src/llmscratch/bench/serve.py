"""The serving benchmark: streaming clients on loopback against `llmscratch serve`, which it starts itself.

For each client count (e.g. 1, 4, 8, 16), that many clients each send `requests` streaming completions at once
(`ignore_eos`: every request generates exactly `max_tokens`). Measured per count: aggregate tokens/s (all new
tokens / wall time), time to first token and time between streamed pieces (p50 / p95). The same load runs
against a second server with batching off (one request at a time), in the same run.

The server runs in its own process (as in production); the clients are threads using the standard library.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmscratch.bench import common
from llmscratch.config import check_fields, setting
from llmscratch.utils import UserError

JSON_NAME = "bench_serve.json"
PNG_NAME = "bench_serve.png"


@dataclass
class ServeBenchConfig:
    """What to measure (the flags of `llmscratch bench serve`)."""

    model: str = setting("gpt2-124m", "model to serve: registered name, folder, .gguf or preset (random weights)")
    clients: tuple[int, ...] = setting((1, 4, 8, 16), "concurrent client counts, comma-separated", ge=1)
    requests: int = setting(2, "streaming requests per client, one after the other", ge=1)
    max_tokens: int = setting(32, "new tokens per request", ge=1)
    max_batch: int = setting(16, "the batching server's --max-batch", ge=1)
    batching_off: bool = setting(True, "skip the run with batching off", switches={"--no-batching-off": False})
    threads: int | None = setting(None, "the server's torch threads (default: all cores)", ge=1)
    out: Path = setting(Path("bench-results"), "folder for bench_serve.json and .png")
    load_timeout: float = setting(900.0, "seconds for the server to load the model", gt=0)
    request_timeout: float = setting(3600.0, "the server's --timeout (waiting in the queue is part of what is "
                                     "measured)", gt=0)
    extra_args: tuple[str, ...] = setting((), "more `llmscratch serve` flags", cli=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        check_fields(self)
        if not self.clients:
            raise UserError("clients must list at least one client count (e.g. 1,4,8)", params="clients")


@dataclass
class Timing:
    """One streamed request: when it was sent, when each piece of text came, how many tokens in all."""

    sent: float
    pieces: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


# ---------------------------------------------------------------------------------------------- the server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(cfg: ServeBenchConfig, batching: bool) -> tuple[subprocess.Popen, int]:
    """`llmscratch serve` in a child process on a free loopback port; returns once /ping answers 200."""
    port = _free_port()
    args = [sys.executable, "-m", "llmscratch", "serve", "--model", cfg.model, "--port", str(port),
            "--max-batch", str(cfg.max_batch), "--max-queue", str(4 * max(cfg.clients)), "--log-level", "warning",
            "--timeout", str(cfg.request_timeout),
            *cfg.extra_args]
    if not batching:
        args.append("--no-batching")
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    if cfg.threads:
        env["OMP_NUM_THREADS"] = str(cfg.threads)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + cfg.load_timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            err = proc.stderr.read().strip().splitlines() if proc.stderr else []
            raise UserError(f"the server did not start: {err[-1] if err else 'exit status ' + str(proc.returncode)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise UserError(f"the server did not load {cfg.model} within {cfg.load_timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------- the clients


def stream_once(port: int, prompt: str, max_tokens: int) -> Timing:
    """One streaming completion; the times its pieces arrived and its token count (from `usage`)."""
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "ignore_eos": True, "stream_options": {"include_usage": True}})
    t = Timing(time.perf_counter())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            t.error = f"HTTP {r.status}: {r.read()[:200]!r}"
            return t
        while line := r.readline():
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                t.tokens = event["usage"]["completion_tokens"]
            elif event.get("error"):
                t.error = event["error"]["message"]
            elif event["choices"] and event["choices"][0]["text"]:
                t.pieces.append(time.perf_counter())
    finally:
        conn.close()
    return t


def run_load(port: int, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """`clients` threads, each sending `requests` streaming requests in turn; the figures of the whole load."""
    timings: list[list[Timing]] = [[] for _ in range(clients)]

    def client(i: int) -> None:
        for k in range(requests):
            timings[i].append(stream_once(port, f"Request {k} of client {i}: tell me a story about", max_tokens))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - started
    done = [t for ts in timings for t in ts]
    errors = [t.error for t in done if t.error]
    if errors:
        raise UserError(f"{len(errors)} of {len(done)} requests failed, e.g.: {errors[0]}")
    ttft = [t.pieces[0] - t.sent for t in done if t.pieces]
    gaps = [b - a for t in done for a, b in zip(t.pieces, t.pieces[1:])]
    tokens = sum(t.tokens for t in done)
    return {"clients": clients, "requests": len(done), "tokens": tokens, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2),
            "ttft_p50_s": round(_percentile(ttft, 50), 4), "ttft_p95_s": round(_percentile(ttft, 95), 4),
            "itl_p50_s": round(_percentile(gaps, 50), 4), "itl_p95_s": round(_percentile(gaps, 95), 4)}


# ---------------------------------------------------------------------------------------------- the run


def run_serve_bench(cfg: ServeBenchConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure with batching on (and off), print a table, write JSON + PNG into cfg.out; returns the JSON."""
    cfg.validate()
    started = time.perf_counter()
    machine = common.machine_info()
    echo(common.format_machine(machine))
    echo(f"model {cfg.model}; {cfg.requests} streaming request(s) of {cfg.max_tokens} tokens per client; "
         f"clients {', '.join(map(str, cfg.clients))}; server max batch {cfg.max_batch}")
    results: dict[str, list[dict]] = {}
    for mode in ("on", "off") if cfg.batching_off else ("on",):
        proc, port = start_server(cfg, batching=mode == "on")
        try:
            run_load(port, 1, 1, min(cfg.max_tokens, 8))  # warm up: first allocations, lazy imports
            results[mode] = []
            for c in cfg.clients:
                row = run_load(port, c, cfg.requests, cfg.max_tokens)
                results[mode].append(row)
                echo(f"batching {mode:>3}, {c:>3} client(s): {row['tokens_per_s']:8.1f} tokens/s, first token p50 "
                     f"{row['ttft_p50_s']:.2f} s p95 {row['ttft_p95_s']:.2f} s, between tokens p50 "
                     f"{1000 * row['itl_p50_s']:.0f} ms p95 {1000 * row['itl_p95_s']:.0f} ms")
        finally:
            stop_server(proc)
    echo("")
    echo(_table(cfg, results))
    scaling = _scaling(cfg, results)
    for line in scaling["lines"]:
        echo(line)
    end = common.machine_info()
    data = {"benchmark": "serve", "machine": machine, "load_avg_at_end": end["load_avg_1_5_15min"],
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "results": results, "scaling": {k: v for k, v in scaling.items() if k != "lines"},
            "wall_s": round(time.perf_counter() - started, 1)}
    cfg.out.mkdir(parents=True, exist_ok=True)
    json_path = common.write_json(cfg.out / JSON_NAME, data)
    png_path = _chart(cfg, results, machine)
    echo(f"load average at the end: {' / '.join(str(x) for x in end['load_avg_1_5_15min'] or [])}; wall time "
         f"{data['wall_s']:.0f} s")
    echo(f"wrote {json_path} and {png_path}")
    return data


def _table(cfg: ServeBenchConfig, results: dict[str, list[dict]]) -> str:
    headers = ["batching", "clients", "tokens/s", "TTFT p50 s", "TTFT p95 s", "between p50 ms", "between p95 ms"]
    rows = [[mode, r["clients"], f"{r['tokens_per_s']:.1f}", f"{r['ttft_p50_s']:.2f}", f"{r['ttft_p95_s']:.2f}",
             f"{1000 * r['itl_p50_s']:.0f}", f"{1000 * r['itl_p95_s']:.0f}"]
            for mode, rs in results.items() for r in rs]
    return common.format_table(headers, rows)


def _scaling(cfg: ServeBenchConfig, results: dict[str, list[dict]]) -> dict[str, Any]:
    """Throughput at each client count over one client's (batching on), and batching on over off."""
    on = {r["clients"]: r["tokens_per_s"] for r in results["on"]}
    off = {r["clients"]: r["tokens_per_s"] for r in results.get("off", [])}
    over_one = {c: round(v / on[1], 2) for c, v in on.items()} if 1 in on else {}
    on_vs_off = {c: round(on[c] / off[c], 2) for c in on if off.get(c)}
    lines = []
    if over_one:
        lines.append("batching on, aggregate tokens/s over one client's: "
                     + ", ".join(f"{c} clients {x:.2f}x" for c, x in over_one.items()))
    if on_vs_off:
        lines.append("batching on over batching off: "
                     + ", ".join(f"{c} clients {x:.2f}x" for c, x in on_vs_off.items()))
    return {"over_one_client": over_one, "on_over_off": on_vs_off, "lines": lines}


def _chart(cfg: ServeBenchConfig, results: dict[str, list[dict]], machine: dict) -> Path:
    def series(key: str, scale: float = 1.0):
        return {f"batching {mode}": ([r["clients"] for r in rs], [scale * r[key] for r in rs])
                for mode, rs in results.items()}

    return common.panel_chart(
        cfg.out / PNG_NAME,
        [("aggregate tokens/s", series("tokens_per_s"), None), ("time to first token, p95 (s)",
                                                                 series("ttft_p95_s"), None)],
        f"llmscratch serve: {cfg.model}, {cfg.max_tokens} tokens per request, streaming clients on loopback",
        "concurrent clients", "", note=f"load {machine.get('load_avg_1_5_15min')}, {machine['cores']} cores")
