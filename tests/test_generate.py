"""The generation loop: input checks, sampling, stop conditions and streaming."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from llmscratch.generate import (
    SamplingConfig,
    check_fits,
    generate,
    generate_steps,
    generate_text,
    sample_next,
    stream_text,
)
from llmscratch.model import LanguageModel, build_model, get_config
from llmscratch.utils import UserError

# A byte-level fake tokenizer: ids 0..255 are single bytes, then a few multi-byte tokens, some of which
# cut UTF-8 characters in the middle ("é" is c3 a9, "😀" is f0 9f 98 80).
EXTRA = [b"h\xc3", b"\xa9llo", b"\xf0\x9f", b"\x98\x80", b" world", b"STOP", b"ST", b"OP"]
EOS = 256 + len(EXTRA)


class FakeTokenizer:
    """Greedy longest-match tokenizer over single bytes and EXTRA; EOS decodes to nothing."""

    def __init__(self):
        self.table = [bytes([i]) for i in range(256)] + EXTRA + [b""]
        self.eos_id = EOS
        self.vocab_size = len(self.table)

    def token_bytes(self, i: int) -> bytes:
        return self.table[i]

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.table[i] for i in ids)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        data, out, i = text.encode("utf-8"), [], 0
        while i < len(data):
            best = max(
                (j for j, t in enumerate(self.table[:EOS]) if t and data.startswith(t, i)),
                key=lambda j: len(self.table[j]),
            )
            out.append(best)
            i += len(self.table[best])
        return out


@dataclass
class ScriptConfig:
    vocab_size: int
    context_length: int = 64
    n_layers: int = 1
    n_kv_heads: int = 1
    head_dim: int = 1


class ScriptedModel(LanguageModel):
    """A model that, after a prompt of `prompt_len` tokens, predicts the tokens of `script` in order (then EOS).

    It follows the loop's contract (one method: forward; new_cache comes from the base) and counts its calls.
    """

    def __init__(self, script: list[int], prompt_len: int, vocab_size: int = EOS + 1):
        super().__init__()
        self.config = ScriptConfig(vocab_size)
        self.script, self.prompt_len = script, prompt_len
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, ids, cache=None, positions=None, pad_mask=None, last_only=False):
        self.calls += 1
        B, T = ids.shape
        end = T if positions is None else int(positions[..., -1].max()) + 1
        logits = torch.zeros(B, T, self.config.vocab_size)
        k = end - self.prompt_len
        logits[:, -1, self.script[k] if k < len(self.script) else EOS] = 10.0
        return logits[:, -1] if last_only else logits


def tiny_gpt(seed=0):
    torch.manual_seed(seed)
    return build_model(get_config("gpt2-tiny")).eval()


@pytest.mark.parametrize(
    "cfg,message",
    [
        (SamplingConfig(max_new_tokens=-1), "max_new_tokens"),
        (SamplingConfig(temperature=-0.1), "temperature"),
        (SamplingConfig(top_p=0.0), "top_p"),
        (SamplingConfig(top_p=1.5), "top_p"),
        (SamplingConfig(top_k=0), "top_k"),
        (SamplingConfig(stop_strings=("",)), "stop strings"),
        (SamplingConfig(repetition_penalty=0.0), "repetition_penalty"),
        (SamplingConfig(repetition_penalty=float("nan")), "repetition_penalty"),
    ],
)
def test_bad_settings_are_user_errors(cfg, message):
    with pytest.raises(UserError, match=message):
        generate(tiny_gpt(), [[1, 2]], cfg)


def test_empty_prompt_and_out_of_vocab_ids_are_user_errors():
    model = tiny_gpt()
    with pytest.raises(UserError, match="at least one token"):
        generate(model, [[1], []], SamplingConfig())
    with pytest.raises(UserError, match="at least one token"):
        generate(model, [], SamplingConfig())
    with pytest.raises(UserError, match="outside the model's vocabulary"):
        generate(model, [[1, 600]], SamplingConfig())
    with pytest.raises(UserError, match="prompt is empty"):
        generate_text(model, FakeTokenizer(), "", SamplingConfig())


def test_context_overflow_is_refused_before_any_work():
    model = ScriptedModel([65] * 100, prompt_len=10)
    with pytest.raises(UserError, match="context length of 64"):
        generate(model, [[1] * 10], SamplingConfig(max_new_tokens=55))
    assert model.calls == 0
    check_fits(model, 10, 54)  # exactly fits
    with pytest.raises(UserError, match="exceeds"):
        check_fits(model, 65, 0)


def test_zero_new_tokens_gives_empty_outputs():
    assert generate(tiny_gpt(), [[1, 2], [3]], SamplingConfig(max_new_tokens=0)) == [[], []]


def test_seeded_sampling_is_reproducible():
    model = tiny_gpt(1)
    cfg = SamplingConfig(max_new_tokens=30, temperature=1.0, seed=123)
    first = generate(model, [[5, 6, 7]], cfg)
    assert generate(model, [[5, 6, 7]], cfg) == first
    assert generate(model, [[5, 6, 7]], SamplingConfig(max_new_tokens=30, temperature=1.0, seed=124)) != first
    # The cache does not change what a seed draws.
    assert generate(model, [[5, 6, 7]], cfg, use_cache=False) == first


def test_top_k_restricts_support():
    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)).repeat(400, 1)  # (400, 50)
    g = torch.Generator().manual_seed(1)
    drawn = set(sample_next(logits, SamplingConfig(temperature=1.0, top_k=5), g).tolist())
    top5 = set(logits[0].topk(5).indices.tolist())
    assert drawn <= top5 and len(drawn) > 1
    assert set(sample_next(logits, SamplingConfig(temperature=1.0, top_k=1), g).tolist()) == {int(logits[0].argmax())}


def test_top_p_restricts_support_to_the_nucleus():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04])
    logits = probs.log().repeat(2000, 1)
    g = torch.Generator().manual_seed(2)
    # 0.5 + 0.25 = 0.75 < 0.8, so the nucleus needs the third token too.
    drawn = sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.8), g)
    assert set(drawn.tolist()) == {0, 1, 2}
    drawn = sample_next(logits, SamplingConfig(temperature=1.0, top_p=0.5), g)
    assert set(drawn.tolist()) == {0}
    drawn = sample_next(logits, SamplingConfig(temperature=1.0, top_p=1.0), g)
    assert set(drawn.tolist()) == {0, 1, 2, 3, 4}


def _written_out_probs(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """The distribution sample_next should draw from (vocab,), by the definitions: temperature, keep the top_k,
    sort, keep each token whose sorted predecessors hold less than top_p of the mass, renormalize."""
    z = logits.double() / cfg.temperature
    if cfg.top_k is not None:
        z = z.masked_fill(z < z.topk(cfg.top_k).values[-1], float("-inf"))
    p = z.softmax(-1)
    if cfg.top_p is not None:
        sp, order = p.sort(descending=True)
        keep = torch.zeros_like(p, dtype=torch.bool)
        keep[order] = (sp.cumsum(-1) - sp) < cfg.top_p
        keep[order[0]] = True
        p = p * keep
    return p / p.sum()


@pytest.mark.parametrize("cfg", [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.5, top_k=3),
                                 SamplingConfig(temperature=1.0, top_p=0.7),
                                 SamplingConfig(temperature=2.0, top_k=5, top_p=0.6)])
def test_sampled_frequencies_follow_the_written_out_distribution(cfg):
    logits = torch.tensor([1.5, 0.2, -0.3, 2.0, 0.9, -1.0, 0.0, 1.1])
    n = 40000
    drawn = sample_next(logits.repeat(n, 1), cfg, torch.Generator().manual_seed(4))
    freq = torch.bincount(drawn, minlength=8).double() / n
    want = _written_out_probs(logits, cfg)
    assert freq[want == 0].sum() == 0  # nothing outside the support
    torch.testing.assert_close(freq, want, atol=0.01, rtol=0)


def test_top_p_finds_a_nucleus_larger_than_its_first_candidates():
    """Without top_k the sampler looks at the top 64 tokens, then more: a nucleus of thousands is found whole."""
    logits = -torch.arange(5000, dtype=torch.float32) * 1e-3  # slowly falling: 0.9 of the mass is ~4,400 tokens
    cfg = SamplingConfig(temperature=1.0, top_p=0.9)
    size = int((_written_out_probs(logits, cfg) > 0).sum())
    assert size > 512
    drawn = sample_next(logits.repeat(20000, 1), cfg, torch.Generator().manual_seed(5))
    assert int(drawn.max()) < size and int(drawn.max()) > size - 50  # the whole nucleus, and nothing past it


def test_greedy_picks_argmax_and_temperature_flattens():
    logits = torch.tensor([[0.0, 2.0, 1.0]]).repeat(3000, 1)
    assert sample_next(logits, SamplingConfig(), None).unique().tolist() == [1]
    g = torch.Generator().manual_seed(3)
    cold = (sample_next(logits, SamplingConfig(temperature=0.2), g) == 1).float().mean()
    hot = (sample_next(logits, SamplingConfig(temperature=5.0), g) == 1).float().mean()
    assert cold > 0.95 and 0.3 < hot < 0.5


def test_stop_ids_cut_each_row_and_end_the_loop():
    a, b = ord("a"), ord("b")
    model = ScriptedModel([a, a, b, a, a, a], prompt_len=2)
    out = generate(model, [[1, 2]], SamplingConfig(max_new_tokens=6, stop_ids=[b]))
    assert out == [[a, a]]
    assert model.calls == 3  # stopped as soon as every row hit a stop id
    steps = list(generate_steps(ScriptedModel([a, b, a], 2), [[1, 2]], SamplingConfig(max_new_tokens=9, stop_ids=[b])))
    assert len(steps) == 2


def test_generate_text_stops_at_eos_and_stop_strings():
    tok = FakeTokenizer()
    prompt = "hi"
    script = tok.encode("h\u00e9llo world") + [EOS] + tok.encode(" more")
    model = ScriptedModel(script, prompt_len=len(tok.encode(prompt)))
    assert generate_text(model, tok, prompt, SamplingConfig(max_new_tokens=20)) == ["h\u00e9llo world"]
    # A stop string completed by a token: the text ends before it, whatever the tokens.
    script = tok.encode("abc") + [EXTRA.index(b"ST") + 256, EXTRA.index(b"OP") + 256] + tok.encode("xyz")
    model = ScriptedModel(script, prompt_len=2)
    cfg = SamplingConfig(max_new_tokens=20, stop_strings=("STOP",))
    assert generate_text(model, tok, prompt, cfg) == ["abc"]
    ids = generate(ScriptedModel(script, prompt_len=2), [tok.encode(prompt)], cfg, tokenizer=tok)[0]
    assert tok.decode(ids) == "abcST"  # the ids stop before the token that completed "STOP"
    with pytest.raises(UserError, match="need a tokenizer"):
        generate(model, [[1]], cfg)


@pytest.mark.parametrize("stop", [(), ("STOP",), ("\U0001f600!",)])
def test_stream_never_splits_characters_and_concatenates_to_the_text(stop):
    tok = FakeTokenizer()
    text = "h\u00e9llo \U0001f600 world \u00e9\U0001f600STOP tail"
    script = tok.encode(text)
    # make sure the script really cuts characters: "h\xc3" + "\xa9llo", emoji as two half tokens
    assert EXTRA.index(b"h\xc3") + 256 in script and EXTRA.index(b"\xf0\x9f") + 256 in script
    cfg = SamplingConfig(max_new_tokens=len(script) + 2, stop_strings=stop)
    pieces = list(stream_text(ScriptedModel(script, prompt_len=1), tok, [104], cfg))
    assert all(p and "\ufffd" not in p for p in pieces)
    full = generate_text(ScriptedModel(script, prompt_len=1), tok, "h", cfg)[0]
    assert "".join(pieces) == full
    expected = text if not stop else text[: text.index(stop[0])] if stop[0] in text else text
    assert full == expected
    assert len(pieces) > 5  # it really streamed


def test_stream_holds_back_a_possible_stop_string_start():
    tok = FakeTokenizer()
    script = tok.encode("aSTx") + tok.encode("STOP")
    cfg = SamplingConfig(max_new_tokens=20, stop_strings=("STOP",))
    pieces = list(stream_text(ScriptedModel(script, prompt_len=1), tok, [1], cfg))
    assert "".join(pieces) == "aSTx"
    assert all("STO" not in p for p in pieces)


def _small_tokenizer():
    from conftest import mirror_file

    from llmscratch.tokenizer import train

    return train(mirror_file("the-verdict.txt").read_text()[:3000], 300, special_tokens=["<|endoftext|>"])


def test_generate_cli_prints_text_and_summary(tmp_path, capsys):
    from llmscratch.cli import main
    from llmscratch.weights.ours import save_pretrained

    tok = _small_tokenizer()
    torch.manual_seed(0)
    model = build_model(get_config("gpt2-tiny", vocab_size=tok.vocab_size))
    save_pretrained(model, tok, tmp_path / "m")
    base = ["generate", "--model", str(tmp_path / "m"), "--prompt", "Hello, my name is", "--max-new-tokens", "6"]
    main(base)
    out, err = capsys.readouterr()
    expected = generate_text(model, tok, "Hello, my name is", SamplingConfig(max_new_tokens=6))[0]
    assert out == expected + "\n"
    assert "6 tokens in" in err and "tokens/s" in err and "KV cache on" in err
    main([*base, "--stream", "--no-kv-cache"])
    out, err = capsys.readouterr()
    assert out == expected + "\n" and "KV cache off" in err
    main([*base, "--temperature", "1.0", "--seed", "5", "--top-k", "50"])
    sampled = generate_text(model, tok, "Hello, my name is",
                            SamplingConfig(max_new_tokens=6, temperature=1.0, seed=5, top_k=50))[0]
    assert capsys.readouterr().out == sampled + "\n"
    with pytest.raises(SystemExit) as e:
        main([*base, "--temperature", "-1"])
    assert e.value.code == 2 and "temperature must be >= 0" in capsys.readouterr().err


def test_generate_cli_refuses_context_overflow_and_warns_for_presets(capsys):
    from llmscratch.cli import main

    with pytest.raises(SystemExit):
        main(["generate", "--model", "gpt2-tiny", "--prompt", "hi", "--max-new-tokens", "100"])
    err = capsys.readouterr().err
    assert "random weights" in err and "context" in err
    assert main(["generate", "--model", "gpt2-tiny", "--prompt", "hi", "--max-new-tokens", "3"]) is None
    out, err = capsys.readouterr()
    assert "random weights" in err and "3 tokens" in err


def test_bench_generate_quick_smoke(tmp_path, capsys):
    import json

    from llmscratch.cli import main

    threads = torch.get_num_threads()
    main(["bench", "generate", "--quick", "--threads", "1", "--no-progress", "--out", str(tmp_path)])
    assert torch.get_num_threads() == threads  # restored
    out, err = capsys.readouterr()
    assert "generate bench" not in err  # --no-progress: no bar
    assert "load average" in out and "OMP_WAIT_POLICY" in out and "memory bandwidth" in out
    assert "ours, KV cache" in out and "decode limit" in out
    data = json.loads((tmp_path / "bench_generate.json").read_text())
    assert data["outputs_identical"] is True
    assert {r["variant"] for r in data["results"]} >= {"ours, KV cache", "ours, no cache"}
    assert all(r["tokens_per_s"] > 0 and len(r["times_s"]) >= 1 for r in data["results"])
    assert data["peak_memory_mb"] > 0 and data["bandwidth"]["matvec_gbs"] > 0
    assert (tmp_path / "bench_generate.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("script, template, noted", [([], "{{ messages }}", True),
                                                     ([104, 105], "{{ messages }}", False), ([], None, False)])
def test_generate_cli_points_a_chat_model_that_stops_at_once_to_chat(monkeypatch, capsys, script, template, noted):
    """An instruction-tuned model often ends a plain-text prompt at once: the command says why the output is empty
    and which command answers in the model's chat format; nothing is said when there is text or no template."""
    from llmscratch import weights
    from llmscratch.cli import main
    from llmscratch.weights import LoadedModel

    loaded = LoadedModel(ScriptedModel(script, prompt_len=2), FakeTokenizer(), "scripted", chat_template=template)
    monkeypatch.setattr(weights, "load_model", lambda *a, **k: loaded)
    main(["generate", "--model", "m", "--prompt", "hi", "--max-new-tokens", "4"])
    out, err = capsys.readouterr()
    assert out.strip() == ("hi" if script else "")
    assert ("llmscratch chat --model m" in err) == noted


def test_repetition_penalty_equals_transformers_and_holds_in_batches():
    """Greedy decoding with repetition_penalty equals a loop that applies transformers' own
    RepetitionPenaltyLogitsProcessor to full forward passes; a row decoded in a batch equals it decoded alone."""
    transformers = pytest.importorskip("transformers")
    model, penalty = tiny_gpt(3), 1.7
    prompts = [[5, 9, 5, 77, 3], [8, 8, 1]]
    processor = transformers.RepetitionPenaltyLogitsProcessor(penalty)
    cfg = SamplingConfig(max_new_tokens=12, repetition_penalty=penalty)
    ours = generate(model, prompts, cfg)
    for prompt, got in zip(prompts, ours):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(12):
                scores = processor(ids, model(ids)[:, -1].float())
                ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], dim=1)
        assert got == ids[0, len(prompt):].tolist()
        assert generate(model, [prompt], cfg)[0] == got  # alone as in the batch
    assert ours != generate(model, prompts, SamplingConfig(max_new_tokens=12))  # the penalty changed something
