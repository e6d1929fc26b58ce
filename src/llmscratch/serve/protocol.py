"""Request bodies -> validated jobs, and jobs' results -> answers, for the three APIs the server speaks:

- OpenAI chat completions (`messages`) and completions (`prompt`), on /v1 and on SageMaker's /invocations;
- the Hugging Face / DJL / TGI body `{"inputs": ..., "parameters": {...}}` on /invocations.

Every mistake is a 400 APIError naming the parameter. Nothing here reads files or runs the model.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from llmscratch.chat import ROLES
from llmscratch.generate import SamplingConfig
from llmscratch.serve.errors import APIError, bad_request

MAX_STOP_STRINGS = 4  # as OpenAI's API


@dataclass
class Job:
    """What one request asks for, checked; prompts are texts, token-id lists, or (chat) one message list."""

    kind: str  # "chat", "completion" or "hf"
    prompts: list[Any] = field(default_factory=list)  # str or list[int] per prompt; chat: [messages]
    n: int = 1  # choices per prompt
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # max_new_tokens 0 here: not given
    max_tokens: int | None = None  # None: the server's default (what fits the context)
    stream: bool = False
    include_usage: bool = False
    return_full_text: bool = False
    ignore_eos: bool = False
    details: bool = False  # hf: each answer with TGI's details (finish reason, generated tokens)


# ---------------------------------------------------------------------------------------------- parsing


def parse_json(raw: bytes) -> dict:
    """The JSON object in a request body (UTF-8); a 400 for invalid UTF-8, malformed JSON or a non-object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request(f"the request body is not valid UTF-8 (byte {e.start})", None, "invalid_utf8") from None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as e:
        raise bad_request(f"the request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}",
                          None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, not {_json_type(body)}", None, "invalid_json")
    return body


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "an integer", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _wrong_type(name: str, want: str, value: Any) -> APIError:
    return bad_request(f"{name} must be {want}, not {_json_type(value)}", name, "invalid_type")


def get_int(body: Mapping, name: str, default: int | None = None, lo: int | None = None, hi: int | None = None,
            label: str | None = None) -> int | None:
    """An integer field (booleans refused), within [lo, hi] when given."""
    label = label or name
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and not math.isfinite(value):  # NaN, Infinity, 1e400 (JSON as Python reads it)
        raise bad_request(f"{label} must be an integer, not {value}", label, "invalid_type")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise _wrong_type(label, "an integer", value)
    value = int(value)
    if lo is not None and value < lo:
        raise bad_request(f"{label} must be >= {lo}, got {value}", label)
    if hi is not None and value > hi:
        raise bad_request(f"{label} must be <= {hi}, got {value}", label)
    return value


def get_float(body: Mapping, name: str, default: float | None = None, label: str | None = None) -> float | None:
    """A finite number field."""
    label = label or name
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _wrong_type(label, "a number", value)
    if not math.isfinite(value):
        raise bad_request(f"{label} must be a finite number, got {value}", label)
    return float(value)


def get_bool(body: Mapping, name: str, default: bool = False, label: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _wrong_type(label or name, "true or false", value)
    return value


def get_stops(body: Mapping, name: str = "stop", label: str | None = None) -> tuple[str, ...]:
    """Stop strings: one string or a list of at most 4 non-empty strings."""
    label = label or name
    value = body.get(name)
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list):
        raise _wrong_type(label, "a string or a list of strings", value)
    for i, s in enumerate(stops):
        if not isinstance(s, str):
            raise _wrong_type(f"{label}[{i}]", "a string", s)
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"{label} takes at most {MAX_STOP_STRINGS} strings, got {len(stops)}", label)
    if any(not s for s in stops):
        raise bad_request(f"{label} strings must not be empty", label)
    return tuple(stops)


def _sampling(temperature: float, top_p: float | None, top_k: int | None, seed: int | None,
              stops: tuple[str, ...], prefix: str = "", repetition_penalty: float | None = None) -> SamplingConfig:
    """A SamplingConfig; range mistakes are 400s naming the field."""
    if repetition_penalty is not None and not 0 < repetition_penalty <= 10:
        raise bad_request(f"{prefix}repetition_penalty must be in (0, 10] (1 is none), got {repetition_penalty}",
                          prefix + "repetition_penalty")
    if temperature < 0 or temperature > 2:
        raise bad_request(f"{prefix}temperature must be in [0, 2] (0 is greedy), got {temperature}",
                          prefix + "temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise bad_request(f"{prefix}top_p must be in (0, 1], got {top_p}", prefix + "top_p")
    return SamplingConfig(max_new_tokens=0, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                          stop_strings=stops, repetition_penalty=1.0 if repetition_penalty is None else
                          repetition_penalty)


# OpenAI fields we do not implement, with the values that ask for nothing (accepted); any other value is a 400
# rather than an answer that silently lacks what was asked for
_UNSUPPORTED = {"logprobs": (None, False, 0), "top_logprobs": (None, 0), "tools": (None, []), "functions": (None, []),
                "tool_choice": (None, "none", "auto"), "function_call": (None, "none", "auto"), "suffix": (None, ""),
                "best_of": (None, 1), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
                "logit_bias": (None, {}), "response_format": (None, {"type": "text"})}

# the same for the parameters of a Hugging Face / TGI body
_UNSUPPORTED_HF = {"frequency_penalty": (None, 0), "typical_p": (None, 1),
                   "best_of": (None, 1), "watermark": (None, False), "decoder_input_details": (None, False),
                   "top_n_tokens": (None, 0), "truncate": (None,), "grammar": (None,), "adapter_id": (None,)}


def _refuse_unsupported(body: Mapping, unsupported: Mapping = _UNSUPPORTED, prefix: str = "") -> None:
    for name, fine in unsupported.items():
        value = body.get(name)
        if not any(value == f and isinstance(value, bool) == isinstance(f, bool) for f in fine):
            raise bad_request(f"{prefix}{name} is not supported by this server (got {json.dumps(value)[:80]})",
                              prefix + name, "unsupported")


def _openai_common(body: Mapping, kind: str, max_n: int, max_tokens_limit: int) -> Job:
    """The fields chat completions and completions share."""
    _refuse_unsupported(body)
    max_tokens = get_int(body, "max_completion_tokens", label="max_completion_tokens")
    name = "max_completion_tokens" if max_tokens is not None else "max_tokens"
    if max_tokens is None:
        max_tokens = get_int(body, "max_tokens")
    if max_tokens is not None and not 1 <= max_tokens <= max_tokens_limit:
        raise bad_request(f"{name} must be in 1..{max_tokens_limit} (the most tokens a request may hold), got "
                          f"{max_tokens}", name)
    stream = get_bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _wrong_type("stream_options", "an object", options)
    include_usage = get_bool(options or {}, "include_usage", label="stream_options.include_usage")
    sampling = _sampling(get_float(body, "temperature", 1.0), get_float(body, "top_p"),
                         get_int(body, "top_k", lo=1), get_int(body, "seed"), get_stops(body),
                         repetition_penalty=get_float(body, "repetition_penalty"))
    return Job(kind, [], get_int(body, "n", 1, 1, max_n), sampling, max_tokens, stream, include_usage, False,
               get_bool(body, "ignore_eos"))


def parse_chat(body: Mapping, max_n: int, max_tokens_limit: int) -> Job:
    """An OpenAI chat completion request."""
    job = _openai_common(body, "chat", max_n, max_tokens_limit)
    job.prompts = [parse_messages(body.get("messages"))]
    return job


def parse_messages(messages: Any) -> list[dict[str, str]]:
    """[{"role", "content"}, ...]: roles system/user/assistant (developer counts as system); content a string or a
    list of text parts."""
    if messages is None:
        raise bad_request("messages is required: a list of {role, content} objects", "messages", "missing")
    if not isinstance(messages, list):
        raise _wrong_type("messages", "a list of {role, content} objects", messages)
    if not messages:
        raise bad_request("messages must not be empty", "messages", "empty")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _wrong_type(f"messages[{i}]", "an object", m)
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ROLES:
            raise bad_request(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}",
                              f"messages[{i}].role", "invalid_role")
        out.append({"role": role, "content": _content(m.get("content"), f"messages[{i}].content")})
    return out


def _content(content: Any, label: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad_request(f"{label}: only text parts ({{'type': 'text', 'text': ...}}) are supported", label)
            parts.append(part["text"])
        return "".join(parts)
    raise _wrong_type(label, "a string or a list of text parts", content)


def parse_completion(body: Mapping, max_n: int, max_tokens_limit: int, vocab_size: int) -> Job:
    """An OpenAI (legacy) completion request: prompt is a string, a list of strings, token ids, or lists of them."""
    job = _openai_common(body, "completion", max_n, max_tokens_limit)
    if get_bool(body, "echo"):
        raise bad_request("echo is not supported", "echo", "unsupported")
    job.prompts = _prompts(body.get("prompt"), vocab_size)
    return job


def _prompts(prompt: Any, vocab_size: int) -> list[Any]:
    if prompt is None:
        raise bad_request("prompt is required", "prompt", "missing")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        prompts = prompt
    elif isinstance(prompt, list) and prompt:  # name the first element that is none of them, or the mix
        for i, p in enumerate(prompt):
            if isinstance(p, bool) or not isinstance(p, (str, list, int)):
                raise _wrong_type(f"prompt[{i}]", "a string, a list of token ids, or a token id", p)
        raise bad_request("prompt mixes token ids with strings or lists: give a list of token ids, or a list of "
                          "prompts (strings or lists of token ids)", "prompt")
    else:
        raise _wrong_type("prompt", "a string, a list of strings, or a list of token ids", prompt)
    for p in prompts:
        if isinstance(p, list):
            if not p or not all(isinstance(t, int) and not isinstance(t, bool) for t in p):
                raise bad_request("a token-id prompt must be a non-empty list of integers", "prompt")
            if any(not 0 <= t < vocab_size for t in p):
                raise bad_request(f"prompt token ids must be in 0..{vocab_size - 1}", "prompt")
        elif not p:
            raise bad_request("the prompt is empty; give some text to continue", "prompt", "empty")
    return prompts


def parse_hf(body: Mapping, max_tokens_limit: int) -> Job:
    """The Hugging Face / DJL / TGI body: {"inputs": str | [str], "parameters": {...}, "stream": bool}."""
    inputs = body.get("inputs")
    if isinstance(inputs, str):
        prompts = [inputs]
    elif isinstance(inputs, list) and inputs and all(isinstance(p, str) for p in inputs):
        prompts = inputs
    else:
        raise _wrong_type("inputs", "a string or a non-empty list of strings", inputs)
    if any(not p for p in prompts):
        raise bad_request("inputs must not be empty; give some text to continue", "inputs", "empty")
    params = body.get("parameters")
    params = {} if params is None else params
    if not isinstance(params, dict):
        raise _wrong_type("parameters", "an object", params)
    p = "parameters."
    _refuse_unsupported(params, _UNSUPPORTED_HF, p)
    max_tokens = get_int(params, "max_new_tokens", label=p + "max_new_tokens")
    if max_tokens is not None and not 1 <= max_tokens <= max_tokens_limit:
        raise bad_request(f"parameters.max_new_tokens must be in 1..{max_tokens_limit} (the most tokens a request "
                          f"may hold), got {max_tokens}", p + "max_new_tokens")
    temperature = get_float(params, "temperature", label=p + "temperature")
    do_sample = get_bool(params, "do_sample", temperature is not None and temperature > 0, label=p + "do_sample")
    temperature = (1.0 if temperature is None else temperature) if do_sample else 0.0
    sampling = _sampling(temperature, get_float(params, "top_p", label=p + "top_p"),
                         get_int(params, "top_k", lo=1, label=p + "top_k"), get_int(params, "seed", label=p + "seed"),
                         get_stops(params, "stop", label=p + "stop"), p,
                         get_float(params, "repetition_penalty", label=p + "repetition_penalty"))
    stream = get_bool(body, "stream")
    if stream and len(prompts) > 1:
        raise bad_request("streaming takes one input, not a list", "inputs")
    return Job("hf", prompts, 1, sampling, max_tokens, stream, False,
               get_bool(params, "return_full_text", label=p + "return_full_text"), False,
               get_bool(params, "details", label=p + "details"))


def parse_invocation(body: Mapping, max_n: int, max_tokens_limit: int, vocab_size: int) -> Job:
    """SageMaker's /invocations: told apart by fields (as TGI and vLLM do): messages -> chat, prompt ->
    completion, inputs -> Hugging Face."""
    if "messages" in body:
        return parse_chat(body, max_n, max_tokens_limit)
    if "prompt" in body:
        return parse_completion(body, max_n, max_tokens_limit, vocab_size)
    if "inputs" in body:
        return parse_hf(body, max_tokens_limit)
    raise bad_request("the body needs 'inputs' (Hugging Face), 'messages' (OpenAI chat) or 'prompt' (OpenAI "
                      "completion)", None, "missing")


# ---------------------------------------------------------------------------------------------- answers


@dataclass
class Choice:
    """One finished sequence."""

    index: int
    text: str
    finish_reason: str
    tokens: int
    stop_sequence: bool = False  # a stop string ended it (finish_reason "stop")


def new_id(kind: str) -> str:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def answer(job: Job, rid: str, model: str, choices: Sequence[Choice], prompt_tokens: int,
           prompt_texts: Sequence[str] = ()) -> Any:
    """The whole (not streamed) answer."""
    if job.kind == "hf":
        return [{"generated_text": (prompt_texts[c.index] if job.return_full_text else "") + c.text}
                | ({"details": hf_details(c.finish_reason, c.tokens, c.stop_sequence)} if job.details else {})
                for c in choices]
    u = usage(prompt_tokens, sum(c.tokens for c in choices))
    if job.kind == "chat":
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": c.index, "message": {"role": "assistant", "content": c.text},
                             "logprobs": None, "finish_reason": c.finish_reason} for c in choices],
                "usage": u}
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": c.index, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                        for c in choices], "usage": u}


def chunk(job: Job, rid: str, model: str, index: int, text: str | None, finish_reason: str | None = None,
          first: bool = False) -> dict:
    """One streamed OpenAI chunk (chat.completion.chunk or text_completion)."""
    if job.kind == "chat":
        delta: dict[str, str] = {"role": "assistant", "content": ""} if first else {}
        if text:
            delta["content"] = text
        c = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        body = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [c]}
    else:
        c = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        body = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": [c]}
    if job.include_usage:
        body["usage"] = None
    return body


def usage_chunk(job: Job, rid: str, model: str, prompt_tokens: int, completion_tokens: int) -> dict:
    """The last chunk when stream_options.include_usage: no choices, the usage."""
    obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
    return {"id": rid, "object": obj, "created": int(time.time()), "model": model, "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def hf_token_event(token_id: int | None, text: str) -> dict:
    """One streamed event in TGI's format."""
    return {"token": {"id": token_id, "text": text, "logprob": None, "special": False}, "generated_text": None,
            "details": None}


def hf_details(finish_reason: str, tokens: int, stop_sequence: bool = False) -> dict:
    """TGI's details of one answer: finish reason eos_token, stop_sequence (a stop string ended it) or length."""
    reason = "length" if finish_reason != "stop" else "stop_sequence" if stop_sequence else "eos_token"
    return {"finish_reason": reason, "generated_tokens": tokens}


def hf_final_event(token_id: int | None, text: str, full_text: str, finish_reason: str, tokens: int,
                   stop_sequence: bool = False) -> dict:
    """TGI's last event: the last piece plus the whole generated text and its details (always, as TGI)."""
    return {"token": {"id": token_id, "text": text, "logprob": None, "special": False}, "generated_text": full_text,
            "details": hf_details(finish_reason, tokens, stop_sequence)}


def sse(data: Any) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


SSE_DONE = b"data: [DONE]\n\n"
