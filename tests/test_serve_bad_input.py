"""Bad input: every case of the table in docs/serve.md gets the status and error code the table says, as the
error JSON, and the server keeps serving afterwards."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from serve_helpers import loaded_tiny, running_server, tiny_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "serve.md"
KEY = "k3y"
CHAT, COMPLETE, INVOKE = "/v1/chat/completions", "/v1/completions", "/invocations"
USER = [{"role": "user", "content": "hi"}]
MB = 1024 * 1024


def _big_chunks():
    for _ in range(7):
        yield b" " * MB


# case name (as in the docs table) -> (method, path, body: bytes | JSON value | None, extra headers)
CASES = {
    "malformed JSON": ("POST", CHAT, b'{"messages": [', {}),
    "body not a JSON object": ("POST", CHAT, b"[1, 2]", {}),
    "invalid UTF-8": ("POST", CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', {}),
    "wrong field type (messages a string)": ("POST", CHAT, {"messages": "hi"}, {}),
    "wrong field type (max_tokens a string)": ("POST", COMPLETE, {"prompt": "x", "max_tokens": "5"}, {}),
    "wrong field type (temperature a string)": ("POST", CHAT, {"messages": USER, "temperature": "hot"}, {}),
    "body over 6 MB (Content-Length)": ("POST", CHAT, b" " * (6 * MB + 1), {}),
    "body over 6 MB (chunked, no length)": ("POST", CHAT, "chunked", {}),
    "unknown route": ("POST", "/v1/nothing", {"x": 1}, {}),
    "wrong method": ("GET", CHAT, None, {}),
    "max_tokens 0": ("POST", CHAT, {"messages": USER, "max_tokens": 0}, {}),
    "max_tokens above the limit": ("POST", CHAT, {"messages": USER, "max_tokens": 10**6}, {}),
    "temperature < 0": ("POST", CHAT, {"messages": USER, "temperature": -0.5}, {}),
    "top_p 0": ("POST", CHAT, {"messages": USER, "top_p": 0}, {}),
    "top_p above 1": ("POST", COMPLETE, {"prompt": "x", "top_p": 1.5}, {}),
    "temperature NaN": ("POST", CHAT, {"messages": USER, "temperature": float("nan")}, {}),
    "temperature between 0 and 1e-6": ("POST", CHAT, {"messages": USER, "temperature": 1e-9}, {}),
    "5 stop strings": ("POST", CHAT, {"messages": USER, "stop": ["a", "b", "c", "d", "e"]}, {}),
    "a stop that is not a string": ("POST", CHAT, {"messages": USER, "stop": ["a", 2]}, {}),
    "a prompt element that is neither text nor a token id": ("POST", COMPLETE, {"prompt": [1.5]}, {}),
    "n above the limit": ("POST", CHAT, {"messages": USER, "n": 100}, {}),
    "empty messages": ("POST", CHAT, {"messages": []}, {}),
    "unknown role": ("POST", CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, {}),
    "empty prompt": ("POST", COMPLETE, {"prompt": ""}, {}),
    "prompt longer than the context": ("POST", COMPLETE, {"prompt": "y" * 300, "max_tokens": 10}, {}),
    "prompt + max_tokens past the context": ("POST", CHAT, {"messages": USER, "max_tokens": 250}, {}),
    "token id outside the vocabulary": ("POST", COMPLETE, {"prompt": [1, 2, 99999]}, {}),
    "no API key on /v1": ("POST", CHAT, {"messages": USER}, {"Authorization": ""}),
    "wrong API key": ("POST", CHAT, {"messages": USER}, {"Authorization": "Bearer nope"}),
    "SageMaker body with no known field": ("POST", INVOKE, {"text": "hi"}, {}),
    "SageMaker inputs not text": ("POST", INVOKE, {"inputs": 42}, {}),
    "SageMaker parameters.top_p above 1": ("POST", INVOKE, {"inputs": "hi", "parameters": {"top_p": 2}}, {}),
    "SageMaker stream with a list of inputs": ("POST", INVOKE, {"inputs": ["a", "b"], "stream": True}, {}),
    "a file path as the model": ("POST", INVOKE, {"inputs": "hi", "model": "/etc/passwd"}, {}),
    "seed NaN": ("POST", CHAT, {"messages": USER, "seed": float("nan")}, {}),
    "max_tokens Infinity": ("POST", COMPLETE, {"prompt": "x", "max_tokens": float("inf")}, {}),
    "logprobs asked for": ("POST", CHAT, {"messages": USER, "logprobs": True}, {}),
    "response_format json_object": ("POST", CHAT, {"messages": USER, "response_format": {"type": "json_object"}}, {}),
    "more sequences than the server takes": ("POST", COMPLETE, {"prompt": ["a"] * 100, "max_tokens": 1}, {}),
    "SageMaker parameters a list": ("POST", INVOKE, {"inputs": "hi", "parameters": []}, {}),
    "SageMaker parameters.typical_p": ("POST", INVOKE, {"inputs": "hi", "parameters": {
        "typical_p": 0.9, "watermark": False, "details": False, "repetition_penalty": 1.1}}, {}),
    "a path out of the page's folder": ("GET", "/static/%2e%2e/app.py", None, {}),
}


def doc_table() -> dict[str, tuple[int, str]]:
    """{case: (status, error code)} from the bad-input table of docs/serve.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.fullmatch(r"\d{3}", cells[2]):
            rows[cells[0]] = (int(cells[2]), cells[3].strip("`"))
    return rows


@pytest.fixture(scope="module")
def server():
    with running_server(loaded_tiny(tiny_model(context_length=256)), api_key=KEY) as (url, srv):
        yield url, srv


def test_the_docs_table_lists_every_case():
    assert set(doc_table()) == set(CASES)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(server, case):
    url, _ = server
    method, path, body, extra = CASES[case]
    headers = {"Authorization": f"Bearer {KEY}", **extra}
    if not headers["Authorization"]:
        del headers["Authorization"]
    if body == "chunked":
        content = _big_chunks()
    else:
        content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    r = httpx.request(method, url + path, content=content, headers=headers, timeout=60)
    status, code = doc_table()[case]
    assert r.status_code == status, r.text
    if status < 400:  # refused in another way (a model field naming a file is ignored: nothing is read)
        assert "error" not in r.text and code == "-"
        return
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert (err["code"] or "-") == code
    if case == "prompt longer than the context":
        assert "300 tokens" in err["message"] and "256" in err["message"]
    messages = {"temperature NaN": ("temperature", "must be a finite number, got nan"),
                "seed NaN": ("seed", "seed must be an integer, not nan"),
                "max_tokens Infinity": ("max_tokens", "max_tokens must be an integer, not inf"),
                "logprobs asked for": ("logprobs", "logprobs is not supported"),
                "SageMaker parameters.typical_p": ("parameters.typical_p", "parameters.typical_p is not supported"),
                "more sequences than the server takes": ("prompt", "asks for 100 sequences"),
                "temperature between 0 and 1e-6": ("temperature", "temperature must be"),
                "a stop that is not a string": ("stop[1]", "stop[1] must be a string, not an integer"),
                "a prompt element that is neither text nor a token id": ("prompt[0]", "prompt[0] must be")}
    if case in messages:  # the element or field at fault is named, in the message and as the param
        param, text = messages[case]
        assert err["param"] == param and text in err["message"], err
    # ... and the server keeps serving.
    ok = httpx.post(url + COMPLETE, json={"prompt": "x", "max_tokens": 2}, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] <= 2
