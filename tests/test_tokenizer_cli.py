"""`llmscratch tokenizer ...` smoke tests, `load_tokenizer(spec)`, and the benchmark function on a small text."""

from __future__ import annotations

import pytest
from conftest import mirror_file

from llmscratch.cli import main
from llmscratch.tokenizer import Tokenizer, load_tokenizer, train
from llmscratch.utils import UserError


def run(capsys, *argv: str) -> str:
    main(list(argv))
    return capsys.readouterr().out


def test_a_file_is_encoded_as_it_is_crlf_included(trained_file, capsys, tmp_path, monkeypatch):
    import io

    text = "line one\r\nline two\r\n\rend"
    path = tmp_path / "crlf.txt"
    path.write_bytes(text.encode("utf-8"))
    from_file = run(capsys, "tokenizer", "encode", "--tokenizer", str(trained_file), "--input", str(path))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(text.encode("utf-8")), newline=""))
    from_stdin = run(capsys, "tokenizer", "encode", "--tokenizer", str(trained_file))
    assert from_file == from_stdin and [int(i) for i in from_file.split()] == Tokenizer.load(trained_file).encode(text)
    decoded = run(capsys, "tokenizer", "decode", "--tokenizer", str(trained_file), "--ids", from_file)
    assert decoded == text


def fails(capsys, *argv: str) -> str:
    """Run a command that must fail as a user error: exit status 2, one line on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("llmscratch: error: ") and err.count("\n") == 1
    return err


@pytest.fixture
def trained_file(tmp_path, capsys):
    out = tmp_path / "tok.json"
    text = mirror_file("the-verdict.txt")
    printed = run(capsys, "tokenizer", "train", "--input", str(text), "--vocab-size", "400", "-o", str(out),
                  "--special-token", "<|endoftext|>")
    assert "trained 400 tokens" in printed and out.exists() and (tmp_path / "tok.vocab").exists()
    return out


def test_train_encode_decode_round_trip(trained_file, capsys):
    text = "I had always thought Jack Gisburn rather a cheap genius"
    ids = run(capsys, "tokenizer", "encode", "--tokenizer", str(trained_file), "--text", text).split()
    assert [int(i) for i in ids] == Tokenizer.load(trained_file).encode(text)
    count = run(capsys, "tokenizer", "encode", "--tokenizer", str(trained_file), "--text", text, "--count")
    assert int(count) == len(ids)
    decoded = run(capsys, "tokenizer", "decode", "--tokenizer", str(trained_file), "--ids", ",".join(ids))
    assert decoded == text  # exactly the input: no newline added (stdout is not a terminal here)


def test_encode_special_tokens_needs_the_flag(trained_file, tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("end<|endoftext|>", encoding="utf-8")
    err = fails(capsys, "tokenizer", "encode", "--tokenizer", str(trained_file), "--input", str(src))
    assert "special token '<|endoftext|>': pass --allow-special" in err and "allowed_special" not in err
    ids = run(capsys, "tokenizer", "encode", "--tokenizer", str(trained_file), "--input", str(src),
              "--allow-special").split()
    assert ids[-1] == "399"


def test_gpt2_from_the_registry(capsys):
    mirror_file("gpt2/encoder.json")
    assert run(capsys, "tokenizer", "encode", "--text", "Hello world").split() == ["15496", "995"]
    tok = load_tokenizer("gpt2")
    assert tok.vocab_size == 50257 and tok.eos_id == 50256 and tok.decode([15496, 995]) == "Hello world"


def test_user_errors_are_one_line(tmp_path, capsys):
    missing = str(tmp_path / "missing.txt")
    assert "not found" in fails(capsys, "tokenizer", "train", "--input", missing, "--vocab-size", "300",
                                "-o", str(tmp_path / "t.json"))
    src = tmp_path / "in.txt"
    src.write_text("hello", encoding="utf-8")
    assert "too small" in fails(capsys, "tokenizer", "train", "--input", str(src), "--vocab-size", "100",
                                "-o", str(tmp_path / "t.json"))
    tok_file = tmp_path / "t.json"
    train("hello", 258).save(tok_file)
    assert "9999" in fails(capsys, "tokenizer", "decode", "--tokenizer", str(tok_file), "--ids", "1 9999")
    assert "integers" in fails(capsys, "tokenizer", "decode", "--tokenizer", str(tok_file), "--ids", "1 x")
    assert "unknown tokenizer" in fails(capsys, "tokenizer", "encode", "--tokenizer", missing, "--text", "a")


def test_load_tokenizer_specs(tmp_path):
    tok = train("spec spec spec", 260)
    tok.save(tmp_path / "mine.json")
    assert load_tokenizer(str(tmp_path / "mine.json")).merges == tok.merges
    with pytest.raises(UserError, match="neither tokenizer.json nor encoder.json"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "other.json").write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(UserError, match="neither an llmscratch tokenizer file nor"):
        load_tokenizer(str(tmp_path / "other.json"))
    with pytest.raises(UserError, match=r"unknown tokenizer 'nope'.*gpt2"):
        load_tokenizer("nope")
    gpt2_folder = mirror_file("gpt2/encoder.json").parent
    assert load_tokenizer(str(gpt2_folder)).encode("Hello world") == [15496, 995]


def test_benchmark_function_reports_both_encoders():
    from llmscratch.tokenizer.bench import benchmark_text, run_tokenizer_benchmark

    text, source = benchmark_text(200_000, [mirror_file("the-verdict.txt")])
    assert len(text.encode()) >= 200_000 and "pydoc_data.topics" in source
    tok = train(text[:50_000], 300)
    result = run_tokenizer_benchmark(tok, text, source, baseline=tok.encode_ordinary, baseline_name="self",
                                     repeats=2, train_vocab_size=300, train_bytes=50_000)
    assert result.same_ids is True and result.ours_mb_s > 0 and result.ratio is not None
    report = result.format()
    assert "ratio" in report and "load average" in report and "train: 300 tokens" in report


def test_an_empty_special_token_is_refused(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello world " * 20, encoding="utf-8")
    err = fails(capsys, "tokenizer", "train", "--input", str(src), "--vocab-size", "270", "-o",
                str(tmp_path / "t.json"), "--special-token", "")
    assert "special token must not be empty" in err and not (tmp_path / "t.json").exists()


def test_the_tokenizer_of_a_gguf_file(tiny_gguf, capsys):
    from llmscratch.weights import load_model

    text = "hello <|im_end|>"
    ids = run(capsys, "tokenizer", "encode", "--tokenizer", str(tiny_gguf), "--text", text, "--allow-special")
    assert [int(i) for i in ids.split()] == load_model(tiny_gguf, progress=False).tokenizer.encode(
        text, allowed_special="all")
    assert "not a registered model" in fails(capsys, "tokenizer", "encode", "--tokenizer", "nope", "--text", "x")
