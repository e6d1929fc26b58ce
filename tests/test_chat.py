"""Chat templates (rendering like transformers' apply_chat_template), the chat session, and `llmscratch chat`."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from llmscratch.chat import ChatSession, chat_prompt_ids, end_of_turn_ids, render_chat
from llmscratch.cli import main
from llmscratch.generate import SamplingConfig
from llmscratch.model.base import LanguageModel
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.byte_level import bytes_to_unicode
from llmscratch.utils import UserError

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}


def byte_tokenizer() -> Tokenizer:
    """One token per byte, plus ChatML specials; EOS is <|im_end|>."""
    vocab = [bytes_to_unicode()[b] for b in range(256)] + list(SPECIALS)
    return Tokenizer.from_vocab_and_merges(vocab, [], SPECIALS, bos_id=257, eos_id=258)


class Scripted(LanguageModel):
    """Greedy choice = a fixed successor of the last token: after "\\n" comes "Paris", then <|im_end|>."""

    def __init__(self, context_length: int = 256, successors: dict[int, int] | None = None):
        super().__init__()
        V = 259
        self.config = SimpleNamespace(vocab_size=V, context_length=context_length, n_layers=1, n_kv_heads=1,
                                      head_dim=1, family="test")
        table = torch.zeros(V, V)
        nxt = {i: ord("x") for i in range(V)}
        nxt.update(successors or {ord("\n"): ord("P"), ord("P"): ord("a"), ord("a"): ord("r"), ord("r"): ord("i"),
                                  ord("i"): ord("s"), ord("s"): 258})
        for a, b in nxt.items():
            table[a, b] = 10.0
        self.head = nn.Linear(V, V, bias=False)
        self.head.weight.data = table.T.contiguous()

    def hidden_states(self, ids, cache=None, positions=None, pad_mask=None):
        return nn.functional.one_hot(ids, self.config.vocab_size).float()  # (B, T, V)


def test_render_matches_transformers_apply_chat_template():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    backend = tokenizers.Tokenizer(tokenizers.models.BPE({"a": 0, "<s>": 1, "</s>": 2}, []))
    template = (
        "{{ bos_token }}{% for m in messages %}"
        "{% if m['role'] == 'user' %}[INST] {{ m['content'] | trim }} [/INST]"
        "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}"
        "{% else %}{{ raise_exception('roles must be user/assistant') }}{% endif %}\n"
        "    {% endfor %}{{ messages | tojson }}"
    )
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=template, bos_token="<s>",
                                              eos_token="</s>")
    messages = [{"role": "user", "content": "  héllo  "}, {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "and \"quotes\" 🤗"}]
    want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert render_chat(template, messages, bos_token="<s>", eos_token="</s>") == want
    assert "\n    " not in want  # lstrip_blocks / trim_blocks did their work
    with pytest.raises(UserError, match="roles must be user/assistant"):
        render_chat(template, [{"role": "system", "content": "x"}])


def test_template_errors_are_user_errors():
    with pytest.raises(UserError, match="not valid jinja2"):
        render_chat("{% for m in messages %}", [])
    with pytest.raises(UserError):  # the sandbox refuses reaching into Python internals
        render_chat("{{ messages.__class__.__mro__ }}", [])


def test_end_of_turn_ids():
    tok = byte_tokenizer()
    assert end_of_turn_ids(tok) == [258, 256]


def test_session_streams_stops_at_end_of_turn_and_keeps_history():
    tok = byte_tokenizer()
    session = ChatSession(Scripted(), tok, CHATML, SamplingConfig(max_new_tokens=20))
    assert session.add_user("What is the capital of France?") == 0
    pieces = list(session.stream_reply())
    assert "".join(pieces) == "Paris" and len(pieces) == 5
    assert session.messages[-1] == {"role": "assistant", "content": "Paris"}
    assert session.reply("And of Italy?") == "Paris"
    assert [m["role"] for m in session.messages] == ["user", "assistant", "user", "assistant"]
    text = tok.decode(session.prompt_ids())
    assert text.count("<|im_start|>assistant\nParis<|im_end|>") == 2 and text.startswith("<|im_start|>system\nBe")
    session.reset()
    assert session.messages == []


def test_system_message_and_dropping_old_turns():
    tok = byte_tokenizer()
    session = ChatSession(Scripted(context_length=120), tok, CHATML, SamplingConfig(max_new_tokens=10),
                          system="Short.")
    assert session.reply("a" * 30) == "Paris"
    # system (26 tokens) + first turn (~70) + this message no longer fit 120 - 10: the first turn goes.
    dropped = session.add_user("b" * 30)
    assert dropped == 1
    assert [m["role"] for m in session.messages] == ["system", "user"] and session.messages[1]["content"] == "b" * 30
    with pytest.raises(UserError, match="exceeds the model's context length"):
        session.add_user("c" * 200)
    assert session.messages[-1]["content"] == "b" * 30  # the refused message is not kept


def test_session_needs_a_template():
    with pytest.raises(UserError, match="no chat template"):
        ChatSession(Scripted(), byte_tokenizer(), None, SamplingConfig())


def test_cli_one_shot(tiny_gguf, capsys):
    main(["chat", "--model", str(tiny_gguf), "--message", "hello", "--temperature", "0", "--max-new-tokens", "6"])
    out = capsys.readouterr().out
    assert out.endswith("\n") and len(out) > 1


def test_cli_interactive_commands_and_eof(tiny_gguf, capsys, monkeypatch):
    long = "x" * 200  # too long for the context: an error, and the session goes on
    monkeypatch.setattr("sys.stdin", io.StringIO(f"hello\n/reset\n/bogus\n\n{long}\nhi again\n"))  # then EOF
    main(["chat", "--model", str(tiny_gguf), "--max-new-tokens", "3", "--seed", "1", "--system", "Be nice."])
    captured = capsys.readouterr()
    assert "(conversation cleared)" in captured.err and "unknown command /bogus" in captured.err
    assert "error: the prompt" in captured.err
    assert len(captured.out.splitlines()) == 2  # two replies


def test_cli_exit_command_and_bad_flags(tiny_gguf, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("/exit\nnever read\n"))
    main(["chat", "--model", str(tiny_gguf)])
    assert capsys.readouterr().out == ""
    with pytest.raises(SystemExit) as e:
        main(["chat", "--model", str(tiny_gguf), "--temperature", "-1", "--message", "x"])
    assert e.value.code == 2 and "temperature must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["chat", "--model", str(tiny_gguf), "--template", "missing.jinja", "--message", "x"])
    assert e.value.code == 2 and "chat template file not found" in capsys.readouterr().err


def test_bos_comes_first_for_models_that_expect_it_also_with_a_template_without_it():
    tok = byte_tokenizer()
    plain = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert chat_prompt_ids(tok, plain, [{"role": "user", "content": "hi"}]) == list(b"hi")
    tok.add_bos = True  # as Gemma's tokenizer: BOS (here 257) first, once
    assert chat_prompt_ids(tok, plain, [{"role": "user", "content": "hi"}]) == [257, *b"hi"]
    with_bos = "{{ bos_token }}" + plain
    assert chat_prompt_ids(tok, with_bos, [{"role": "user", "content": "hi"}]) == [257, *b"hi"]


def test_default_lengths_fit_a_small_models_context(capsys, tmp_path):
    """Without --max-new-tokens, generate (50) and chat (256) ask for no more than a 64-token model holds; given
    explicitly, a length that does not fit is refused."""
    prompt = "ab " * 19  # 57 tokens of gpt2-tiny's byte-level vocabulary: 7 left
    main(["generate", "--model", "gpt2-tiny", "--prompt", prompt])
    err = capsys.readouterr().err
    assert "note: at most 7 new tokens" in err and "7 tokens in" in err
    with pytest.raises(SystemExit):
        main(["generate", "--model", "gpt2-tiny", "--prompt", prompt, "--max-new-tokens", "50"])
    assert "--max-new-tokens (50) exceeds" in capsys.readouterr().err
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    main(["chat", "--model", "gpt2-tiny", "--message", "hi", "--template", str(template)])
    assert "replies of at most 32 tokens" in capsys.readouterr().err
