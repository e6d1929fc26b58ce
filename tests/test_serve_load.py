"""Load: 64 concurrent clients, streaming and not, chat and completions, three rounds. None is lost, none is
mixed up (each greedy answer equals its answer alone), no request is held on to, and memory after two more
rounds is back at its level after the first. Bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import os

import httpx
from serve_helpers import CHATML, busy, byte_tokenizer, loaded_tiny, running_server, tiny_model

from llmscratch.chat import chat_prompt_ids, end_of_turn_ids
from llmscratch.generate import SamplingConfig, generate, generate_text
from llmscratch.serve.text import Generation

CLIENTS = 64
MAX_TOKENS = 12
TIME_LIMIT = 240  # seconds for the whole load, on a busy 2-core machine


def rss_mb() -> float:
    """This process's resident memory (Linux /proc), MB, after freed memory went back to the system."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed blocks otherwise
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def request_for(i: int) -> tuple[str, dict]:
    """Client i's request: alternately chat or completion, streamed or not, prompts of different lengths."""
    text = "abcdefghij"[: i % 10] * (1 + i % 3) + f" client {i}"
    body: dict = {"max_tokens": MAX_TOKENS, "temperature": 0, "stream": i % 2 == 0}
    if i % 4 < 2:
        return "/v1/completions", {**body, "prompt": text}
    return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": text}]}


def solo_answer(model, tok, path: str, body: dict) -> str:
    """The same request's answer alone, from the library functions the server calls."""
    cfg = SamplingConfig(max_new_tokens=MAX_TOKENS)
    if path == "/v1/completions":
        return generate_text(model, tok, body["prompt"], cfg)[0]
    ids = chat_prompt_ids(tok, CHATML, body["messages"])
    return tok.decode(generate(model, [ids], SamplingConfig(MAX_TOKENS, stop_ids=tuple(end_of_turn_ids(tok))))[0])


async def one_client(http: httpx.AsyncClient, path: str, body: dict) -> str:
    """Send the request (again after Retry-After on a 429, a few times at most); the answer's text."""
    for _ in range(20):
        if body["stream"]:
            async with http.stream("POST", path, json=body) as r:
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers["retry-after"]))
                    continue
                assert r.status_code == 200, await r.aread()
                text, done = "", False
                async for line in r.aiter_lines():
                    if line == "data: [DONE]":
                        done = True
                    elif line.startswith("data: "):
                        c = json.loads(line[6:])["choices"][0]
                        text += c["delta"].get("content") or "" if "delta" in c else c["text"]
                assert done
                return text
        r = await http.post(path, json=body)
        if r.status_code == 429:
            await asyncio.sleep(float(r.headers["retry-after"]))
            continue
        assert r.status_code == 200, r.text
        c = r.json()["choices"][0]
        return c["message"]["content"] if "message" in c else c["text"]
    raise AssertionError("still refused after 20 tries")


async def load(url: str, n: int) -> list[str]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=TIME_LIMIT) as http:
        jobs = [one_client(http, *request_for(i)) for i in range(n)]
        return await asyncio.wait_for(asyncio.gather(*jobs), TIME_LIMIT)


def test_64_concurrent_clients_none_lost_none_mixed_memory_back():
    model, tok = tiny_model(), byte_tokenizer()
    want = [solo_answer(model, tok, *request_for(i)) for i in range(CLIENTS)]
    assert len(set(want)) > CLIENTS // 4  # many answers differ: a mix-up would show
    with running_server(loaded_tiny(model), max_batch=8, max_queue=CLIENTS) as (url, srv):
        assert asyncio.run(load(url, CLIENTS)) == want  # also the warm-up: thread pools, allocator caches
        before = rss_mb()
        for _ in range(2):
            assert asyncio.run(load(url, CLIENTS)) == want
        after = rss_mb()
        assert busy(srv.state.engine) == 0 and srv.state.inflight == 0
        assert not [o for o in gc.get_objects() if type(o) is Generation]  # no request is held on to
        assert after - before < 20, f"memory grew from {before:.0f} MB to {after:.0f} MB"
