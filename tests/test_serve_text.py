"""The server's text layer: increments never split a UTF-8 character and stop before a stop string, exactly as
`llmscratch.generate.stream_text` does; request bodies are parsed into the library's SamplingConfig."""

from __future__ import annotations

import pytest
from serve_helpers import byte_tokenizer, tiny_model

from llmscratch.generate import SamplingConfig, generate, stream_text
from llmscratch.serve.errors import APIError
from llmscratch.serve.protocol import parse_chat, parse_hf, parse_invocation
from llmscratch.serve.text import TextStream

TEXT = "héllo wörld 🤗 and then STOP here"


def test_increments_never_split_a_character():
    tok = byte_tokenizer()
    ts = TextStream(tok)
    pieces = [ts.feed(t) for t in tok.encode(TEXT)] + [ts.finish()]
    assert "".join(pieces) == TEXT and "\ufffd" not in "".join(pieces)
    assert "" in pieces  # the bytes of 🤗 were held until the character was whole


@pytest.mark.parametrize("stops", [("STOP",), ("ST", "zz"), ("then STOP here and more",), ("🤗",), ("d 🤗 a",)])
def test_stop_strings_end_the_text_where_they_start(stops):
    tok = byte_tokenizer()
    ts = TextStream(tok, stops)
    pieces = []
    for t in tok.encode(TEXT):
        pieces.append(ts.feed(t))
        if ts.stopped:
            break
    pieces.append(ts.finish())
    cut = min((i for i in (TEXT.find(s) for s in stops) if i >= 0), default=len(TEXT))
    assert "".join(pieces) == TEXT[:cut]
    assert ts.stopped == (cut < len(TEXT))


def test_same_text_as_stream_text_on_a_model():
    model, tok = tiny_model(), byte_tokenizer()
    prompt = tok.encode("Hello")
    for stops in [(), ("!",), ("\x15!", "cn")]:
        cfg = SamplingConfig(max_new_tokens=40, stop_strings=stops)
        want = "".join(stream_text(model, tok, prompt, cfg))
        ts = TextStream(tok, stops)
        ids = generate(model, [prompt], SamplingConfig(max_new_tokens=40, stop_ids=(tok.eos_id,)))[0]
        got = "".join(ts.feed(t) for t in ids) + ts.finish()
        assert got == want


def test_bodies_become_sampling_configs():
    job = parse_chat({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}]}],
                      "max_completion_tokens": 5, "temperature": 0.5, "top_p": 0.9, "seed": 3, "stop": "x",
                      "n": 2}, max_n=4, max_tokens_limit=100)
    assert job.prompts == [[{"role": "system", "content": "a"}]] and job.n == 2 and job.max_tokens == 5
    assert (job.sampling.temperature, job.sampling.top_p, job.sampling.seed) == (0.5, 0.9, 3)
    assert job.sampling.stop_strings == ("x",)
    hf = parse_hf({"inputs": "a", "parameters": {"temperature": 0.7, "do_sample": False}}, 100)
    assert hf.sampling.temperature == 0  # do_sample false: greedy
    assert parse_hf({"inputs": "a", "parameters": {"temperature": 0.7}}, 100).sampling.temperature == 0.7
    assert parse_hf({"inputs": "a", "parameters": {"do_sample": True}}, 100).sampling.temperature == 1.0
    assert parse_invocation({"prompt": "a"}, 4, 100, 259).kind == "completion"
    with pytest.raises(APIError, match="seed must be an integer"):
        parse_chat({"messages": [{"role": "user", "content": "a"}], "seed": 1.5}, 4, 100)
    with pytest.raises(APIError, match="stream_options.include_usage must be true or false"):
        parse_chat({"messages": [{"role": "user", "content": "a"}], "stream_options": {"include_usage": 1}}, 4, 100)


def test_a_time_limit_says_whether_the_request_ever_got_a_row():
    import asyncio
    from types import SimpleNamespace

    from llmscratch.serve.text import Generation

    async def cut(request) -> str:
        g = Generation(asyncio.get_running_loop(), byte_tokenizer())
        g.handle = SimpleNamespace(request=request, cancel=lambda: None)
        with pytest.raises(APIError) as e:
            async for _ in g.pieces(asyncio.get_running_loop().time()):  # the deadline is now
                pass
        assert e.value.status == 504
        return e.value.message

    assert "without getting its turn (the server is busy)" in asyncio.run(cut(None))  # still waiting for a row
    assert "ask for fewer tokens" in asyncio.run(cut(object()))  # it was generating
