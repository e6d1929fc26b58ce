"""Bad input at the command line: outputs never destroy inputs or a user's folder; mistakes are one line, exit 2."""

from __future__ import annotations

import os

import pytest

from llmscratch.cli import main
from llmscratch.utils import FolderInUse, UserError, atomic_folder, check_replaceable, folder_problem


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, *argv: str) -> str:
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    last = err.splitlines()[-1]  # after progress bars, if any
    assert last.startswith("llmscratch: error: ") and "Traceback" not in err, err
    return last


# ------------------------------------------------------------------------------- outputs onto inputs


def test_tokenize_refuses_its_input_as_output(capsys, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello world\n")
    link = tmp_path / "link.txt"
    link.symlink_to(text)
    assert "same file as the input" in _error(capsys, "data", "tokenize", text, "-o", text, "--quiet")
    assert "same file as the input" in _error(capsys, "data", "tokenize", link, "-o", text, "--quiet")
    header = tmp_path / "t.bin.json"  # the header written beside -o t.bin
    header.write_text("keep me")
    assert "same file as the input" in _error(capsys, "data", "tokenize", header, "-o", tmp_path / "t.bin", "--quiet")
    assert text.read_text() == "hello world\n" and header.read_text() == "keep me"
    assert "is a folder" in _error(capsys, "data", "tokenize", text, "-o", tmp_path, "--quiet")


def test_tokenizer_train_refuses_its_input_as_output(capsys, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello hello world\n")
    assert "same file as the input" in _error(capsys, "tokenizer", "train", "--input", text, "--vocab-size", "260",
                                              "-o", text)
    vocab = tmp_path / "a.vocab"  # -o a.json also writes a.vocab
    vocab.write_text("hello\n")
    assert "same file as the input" in _error(capsys, "tokenizer", "train", "--input", vocab, "--vocab-size", "260",
                                              "-o", tmp_path / "a.json")
    assert text.read_text() == "hello hello world\n" and vocab.read_text() == "hello\n"


def test_tokenizer_and_token_files_replace_only_their_own_kind(capsys, tmp_path):
    """-o over a user's file is refused (--overwrite replaces it); over an earlier output of the same command it is
    replaced."""
    text = tmp_path / "a.txt"
    text.write_text("hello hello world " * 20)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    train = ["tokenizer", "train", "--input", text, "--vocab-size", "260", "-o"]
    assert "notes.txt exists and is not a tokenizer file of ours" in _error(capsys, *train, notes)
    assert "--overwrite" in _error(capsys, *train, notes)
    (tmp_path / "tok.vocab").write_text("mine")  # a .vocab with no tokenizer of ours beside it
    assert "tok.vocab exists" in _error(capsys, *train, tmp_path / "tok.json")
    (tmp_path / "tok.vocab").unlink()
    main([str(a) for a in (*train, tmp_path / "tok.json")])
    main([str(a) for a in (*train, tmp_path / "tok.json")])  # an earlier tokenizer of ours: replaced
    tokenize = ["data", "tokenize", text, "--tokenizer", tmp_path / "tok.json", "--quiet", "-o"]
    assert "is not a token file of ours" in _error(capsys, *tokenize, notes)
    assert notes.read_text() == "mine"
    main([str(a) for a in (*tokenize, tmp_path / "t.bin")])
    main([str(a) for a in (*tokenize, tmp_path / "t.bin")])
    main([str(a) for a in (*tokenize, notes, "--overwrite")])
    assert notes.read_bytes() == (tmp_path / "t.bin").read_bytes()


# ------------------------------------------------------------------------------- folders that are not ours


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["hf", "ours"])
def test_export_never_replaces_a_users_folder_or_file(capsys, tmp_path, fmt):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    run = tmp_path / "run"  # a training run: metrics, checkpoints
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"x")
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    before = _tree(tmp_path)
    for out in (user, run, plain):
        err = _error(capsys, "export", "--model", "gpt2-tiny", "--format", fmt, "-o", out)
        assert "refusing to replace it" in err and "--overwrite" in err and "overwrite=True" not in err
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "run", "user"]  # no hidden .old copies


def test_export_replaces_its_own_output_and_anything_with_overwrite(capsys, tmp_path):
    out = tmp_path / "m"
    assert _run(capsys, "export", "--model", "gpt2-tiny", "-o", out)[0] == 0
    assert _run(capsys, "export", "--model", "gpt2-tiny", "--format", "ours", "-o", out)[0] == 0  # ours -> ours
    assert (out / "tokenizer.json").is_file() and not (out / "generation_config.json").exists()
    (out / "notes.txt").write_text("mine")
    assert _run(capsys, "export", "--model", "gpt2-tiny", "-o", out)[0] == 2
    assert (out / "notes.txt").read_text() == "mine"
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    for target in (out, plain):
        assert _run(capsys, "export", "--model", "gpt2-tiny", "-o", target, "--overwrite")[0] == 0
        assert (target / "model.safetensors").is_file() and not (target / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "plain.txt"]


def test_folder_rule(tmp_path):
    assert folder_problem(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert folder_problem(tmp_path / "empty") is None
    ours = tmp_path / "ours"
    ours.mkdir()
    for name in ("model.safetensors", "config.json", ".config.json.abc.tmp"):
        (ours / name).write_text("x")
    assert folder_problem(ours) is None
    only_config = tmp_path / "cfg"
    only_config.mkdir()
    (only_config / "config.json").write_text("{}")  # some program's settings: not a model folder
    assert "no weights" in folder_problem(only_config)
    (ours / "sub").mkdir()
    assert "not ours (sub)" in folder_problem(ours)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    assert "symbolic link" in folder_problem(link)
    with pytest.raises(FolderInUse, match="overwrite=True"):
        check_replaceable(ours)
    check_replaceable(ours, overwrite=True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot make the folder .*afile is a file"):
        check_replaceable(tmp_path / "afile" / "sub", overwrite=True)


def test_input_files_that_are_folders_or_missing_are_named(capsys, tmp_path):
    assert "chat template " + str(tmp_path) + " is a folder, not a file" in _error(
        capsys, "chat", "--model", "gpt2-tiny", "--template", tmp_path, "--message", "hi")
    assert "is a folder, not a file" in _error(capsys, "tokenizer", "encode", "--input", tmp_path)
    assert "classifier folder not found" in _error(capsys, "classify", "--model", tmp_path / "nope", "--text", "x")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe caf\xe9\n")
    for argv in (["chat", "--model", "gpt2-tiny", "--template", bad, "--message", "hi"],
                 ["finetune", "dpo", "--model", "gpt2-tiny", "--data", bad, "--out", tmp_path / "run"],
                 ["finetune", "classify", "--model", "gpt2-tiny", "--data", bad, "--out", tmp_path / "run"]):
        err = _error(capsys, *argv)
        assert str(bad) in err and "not UTF-8" in err, (argv, err)


def test_atomic_folder_refuses_before_the_body_runs_and_overwrite_replaces_a_link_not_its_target(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    ran = []
    with pytest.raises(UserError), atomic_folder(user) as tmp:
        ran.append(tmp)
    assert not ran and (user / "notes.txt").read_text() == "mine"
    link = tmp_path / "link"
    link.symlink_to(user)
    with atomic_folder(link, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
    assert not link.is_symlink() and (link / "model.safetensors").is_file()
    assert (user / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["link", "user"]


# ------------------------------------------------------------------------------- file system errors


def _read_only_dir(tmp_path):
    """A folder nobody may write into: chmod works for users; root writes anywhere except read-only mounts."""
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        return ro
    try:
        open("/sys/llmscratch-probe", "w").close()
    except OSError:
        return "/sys"
    os.unlink("/sys/llmscratch-probe")
    pytest.skip("running as root without a read-only folder (/sys) to write into")


@pytest.mark.parametrize("argv", [
    ["data", "tokenize", "{txt}", "-o", "{ro}/t.bin", "--quiet"],
    ["tokenizer", "train", "--input", "{txt}", "--vocab-size", "260", "-o", "{ro}/t.json"],
    ["export", "--model", "gpt2-tiny", "-o", "{ro}/m"],
    ["data", "tokenize", "{txt}", "-o", "{txt}/t.bin", "--quiet"],  # below a file
])
def test_unwritable_outputs_are_one_line(capsys, tmp_path, argv):
    txt = tmp_path / "a.txt"
    txt.write_text("hello hello world\n")
    ro = _read_only_dir(tmp_path)
    err = _error(capsys, *[a.format(txt=txt, ro=ro) for a in argv])
    assert any(w in err for w in ("permission", "not permitted", "read-only", "is a file")), err


def test_full_disk_keeps_what_was_there(capsys, tmp_path, corpus):
    import resource
    import signal

    txt = tmp_path / "a.txt"
    txt.write_text("hello world " * 500)
    tok = tmp_path / "tok.json"
    tok.write_bytes((corpus / "tok.json").read_bytes())
    out = tmp_path / "t.bin"
    out.write_bytes(b"old tokens")
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
    try:
        err = _error(capsys, "data", "tokenize", txt, "-o", out, "--tokenizer", tok, "--quiet")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert str(out) in err and ("too large" in err or "disk" in err)
    assert out.read_bytes() == b"old tokens"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "t.bin", "tok.json"]


def test_not_utf8_files_are_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe caf\xe9\n")
    model = tmp_path / "m"
    assert _run(capsys, "export", "--model", "gpt2-tiny", "--format", "ours", "-o", model)[0] == 0
    assert "not UTF-8" in _error(capsys, "tokenizer", "encode", "--input", bad)
    assert "not UTF-8" in _error(capsys, "data", "tokenize", bad, "-o", tmp_path / "t.bin", "--quiet")
    assert "utf-8" in _error(capsys, "tokenizer", "encode", "--tokenizer", bad, "--text", "hi").lower()
    (model / "config.json").write_bytes(b"{\"family\": \"gpt2\xff\"}")
    assert "config" in _error(capsys, "generate", "--model", model, "--prompt", "hi")
    assert "config" in _error(capsys, "model", "info", model)


# ------------------------------------------------------------------------------- impossible values


@pytest.mark.parametrize("change", [
    {"n_heads": 0}, {"emb_dim": -32}, {"n_layers": 2.5}, {"vocab_size": 0}, {"context_length": 10**12},
    {"dropout": float("nan")}, {"dropout": 1.0}, {"layer_norm_eps": 0.0}, {"layer_norm_eps": float("inf")},
    {"n_heads": 5}, {"qkv_bias": "yes"}, {"context_length": None},
])
def test_model_folder_with_impossible_config(capsys, tmp_path, change):
    import json

    model = tmp_path / "m"
    assert _run(capsys, "export", "--model", "gpt2-tiny", "--format", "ours", "-o", model)[0] == 0
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **change}).replace("NaN", "NaN"))
    for argv in (["generate", "--model", model, "--prompt", "hi"], ["model", "info", model],
                 ["export", "--model", model, "-o", tmp_path / "x"]):
        assert str(model / "config.json") in _error(capsys, *argv)


@pytest.mark.parametrize("flags", [
    ["--temperature", "nan"], ["--temperature", "inf"], ["--temperature", "-1"], ["--top-p", "nan"],
    ["--top-p", "0"], ["--top-k", "0"], ["--max-new-tokens", "-1"], ["--seed", str(2**70)],
])
def test_sampling_settings_refused_before_loading(capsys, flags):
    err = _error(capsys, "generate", "--model", "no-such-model", "--prompt", "hi", *flags)
    assert flags[0] in err and "no-such-model" not in err  # checked first, named as the flag


# ------------------------------------------------------------------------------- what the README promises


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_tiny_presets_generate_with_random_weights(capsys, preset):
    code, out, err = _run(capsys, "generate", "--model", preset, "--prompt", "hi", "--max-new-tokens", "4")
    assert code == 0 and "random weights" in err and "4 tokens" in err and out.strip()


def test_model_info_takes_registered_names(capsys, tmp_path, monkeypatch):
    from llmscratch.weights import registry

    folder = tmp_path / "hf"
    assert _run(capsys, "export", "--model", "llama-tiny", "-o", folder)[0] == 0
    fetched = []
    monkeypatch.setattr(registry, "fetch", lambda name, *a, **k: fetched.append(name) or folder)
    code, out, _ = _run(capsys, "model", "info", "smollm2-135m-instruct")
    assert code == 0 and fetched == ["smollm2-135m-instruct"]  # fetched (or found cached), weights not loaded
    assert out.startswith("smollm2-135m-instruct: llama, 2 layers, 4 heads (2 key/value heads)")
    assert "neither a preset" in _error(capsys, "model", "info", "no-such-model")


def test_classify_explains_text_and_input(capsys, tmp_path):
    err = _error(capsys, "classify", "--model", tmp_path, "--text", "hi", "--input", tmp_path / "messages.txt")
    assert "either with --text" in err and "one text per line" in err and "not both" in err
    assert "one of the two" in _error(capsys, "classify", "--model", tmp_path)


def test_library_parameters_become_flags():
    from pathlib import Path

    from llmscratch.cli import build_parser, leaf_parser, user_message

    parser = build_parser()

    def message(error, *argv):
        return user_message(error, leaf_parser(parser, parser.parse_args(list(argv))))

    gen = ["generate", "--model", "m", "--prompt", "p"]
    e = UserError("max_new_tokens must be >= 0; a max_new_tokens_x stays", params="max_new_tokens")
    assert message(e, *gen) == "--max-new-tokens must be >= 0; a max_new_tokens_x stays"
    e = UserError("temperature must be >= 0; the temperature stays a word", params="temperature")
    assert message(e, *gen) == "--temperature must be >= 0; the temperature stays a word"
    assert message(FolderInUse(Path("x"), "is a file"), "export", "--model", "m", "-o", "x").endswith(
        "pass --overwrite to replace it anyway")
    e = UserError("no chat template; give one (template=FILE)", params="template")
    assert message(e, "chat", "--model", "m") == "no chat template; give one (--template FILE)"
    e = UserError("pass with_transformers=False", params="with_transformers")
    assert message(e, "bench", "train") == "pass --no-transformers"
    e = UserError("max_new_tokens must be >= 0", params="max_new_tokens")
    assert message(e, "export", "--model", "m", "-o", "x") == "max_new_tokens must be >= 0"  # not a flag there


def test_library_messages_name_no_flags():
    """Outside cli/, raised messages name parameters, not --flags: the CLI adds the flags where it maps them. A
    whole command line in backticks (`aws s3 mb ... --region R`, `llmscratch deploy delete --endpoint-name E`) is
    another command to run, not this one's flag."""
    import ast
    import re
    from pathlib import Path

    import llmscratch

    root = Path(llmscratch.__file__).parent
    skip = ("cli/",)
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(skip):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                parts = sorted((c for c in ast.walk(node.exc) if isinstance(c, ast.Constant) and isinstance(
                    c.value, str)), key=lambda c: (c.lineno, c.col_offset))
                text = re.sub(r"`[^`]*`", "", "{}".join(c.value for c in parts))  # f-string values as {}
                if re.search(r"(^|[\s(])--[a-z]", text):
                    found.append(f"{rel}:{node.lineno}: {text}")
    assert not found, "\n".join(found)


def test_more_mistakes_are_one_clear_line(capsys, tmp_path):
    """Found by a new-user pass (session 10): each was several lines, a misleading message, or no error at all."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert "see: llmscratch export --help" in _error(capsys, "export", "--model", "x", "--format", "gguf", "-o", "y")
    assert "cannot be made: " in _error(capsys, "demo", "--quick", "--out", afile)  # before any work
    assert afile.read_text() == "mine"
    assert "is a file; verify checks the model folder" in _error(capsys, "deploy", "verify", afile)
    assert "neither a registered model" in _error(capsys, "demo", "--real-model", "nosuch", "--out", tmp_path / "d")
    assert not (tmp_path / "d").exists()  # refused before any work
    assert "is not a model folder" in _error(capsys, "demo", "--real-model", tmp_path, "--out", tmp_path / "d")
    assert "is not a model: give a model folder" in _error(capsys, "demo", "--real-model", afile, "--out",
                                                           tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_bench_and_classify_mistakes_found_by_a_new_user(capsys, tmp_path):
    """Each used to be a traceback or to fail only after the benchmark had run."""
    assert "--clients must list at least one client count" in _error(
        capsys, "bench", "serve", "--model", "llama-tiny", "--clients", "", "--requests", "1")
    assert _error(capsys, "bench", "serve", "--model", "nope").startswith("llmscratch: error: unknown model 'nope'")
    (tmp_path / "afile").write_text("x")
    assert "cannot be made: " in _error(capsys, "bench", "train", "--quick", "--no-transformers", "--out",
                                        tmp_path / "afile")
    folder = tmp_path / "k1"
    folder.mkdir()
    (folder / "classifier.safetensors").write_bytes(b"")
    (folder / "classifier.json").write_text(
        '{"format": "llmscratch-classifier", "version": 1, "label_names": ["a", "b"], "max_length": 16, '
        '"base_fingerprint": "x", "pad_id": 0, "tokenizer": "gpt2", "base_model": "llama-tiny", "trainable": "abc"}')
    assert "classifier.json is damaged" in _error(capsys, "classify", "--model", folder, "--text", "hi")


def test_found_by_a_weights_tester(capsys, tmp_path, monkeypatch):
    """Session 13's new-user pass over export and quantize: each was a traceback, or pointed to the wrong help."""
    assert "(see: llmscratch export --help)" in _error(capsys, "export", "--model", "llama-tiny", "-o",
                                                        tmp_path / "z", "extra")
    assert "(see: llmscratch tokenizer decode --help)" in _error(capsys, "tokenizer", "decode", "--tokenizer",
                                                                  "gpt2", "6252", "12")
    here = tmp_path / "here"
    here.mkdir()
    (here / "mine.txt").write_text("mine")
    monkeypatch.chdir(here)
    for out in (".", ""):
        assert "is the current folder or holds it" in _error(capsys, "export", "--model", "llama-tiny", "-o", out,
                                                             "--overwrite")
    assert "is the current folder" in _error(capsys, "quantize", "--model", "llama-tiny", "--to", "int8", "-o",
                                             tmp_path, "--overwrite")
    assert sorted(p.name for p in here.iterdir()) == ["mine.txt"]
    # folders that hold something else than a model say what they are
    (here / "cls").mkdir()
    (here / "cls" / "classifier.json").write_text("{}")
    assert "is a classifier (classifier.json)" in _error(capsys, "generate", "--model", "cls", "--prompt", "x")
    (here / "run" / "final").mkdir(parents=True)
    (here / "run" / "train_config.json").write_text("{}")
    assert "is a training run, not a model folder: its model is run/final" in _error(
        capsys, "export", "--model", "run", "-o", tmp_path / "x")
    # a mistyped path below an existing folder is not taken for a Hugging Face Hub id (and never downloaded)
    assert "no file or folder 'run/finale' (./run is a folder here" in _error(capsys, "generate", "--model",
                                                                              "run/finale", "--prompt", "x")
    assert "not fetched from hub; run `llmscratch models fetch gpt2-xl --source hub`" in _error(
        capsys, "models", "path", "gpt2-xl", "--source", "hub")
    assert "--head-format applies to a quantized head" in _error(
        capsys, "quantize", "--model", "llama-tiny", "--to", "int4", "--no-quantize-head", "--head-format", "int8",
        "-o", tmp_path / "q")


def test_a_full_disk_inside_safetensors_is_one_line(capsys, tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    assert _error(capsys, "export", "--model", "llama-tiny", "--format", "ours", "-o", tmp_path / "out").endswith(
        ": the disk is full (files written before are kept; partial outputs were removed)")
    assert list(tmp_path.iterdir()) == []  # the partial folder is gone


def test_sigterm_removes_partial_outputs(capsys, tmp_path, monkeypatch):
    """`timeout`, job schedulers and container stops send SIGTERM: partial outputs go, as on Ctrl-C."""
    import signal

    import safetensors.torch

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode

    monkeypatch.setattr(safetensors.torch, "save_file", terminated)
    missed = []  # without the command's own handler, this one gets the signal (and the test run survives)

    def fallback(signum, frame):
        missed.append(signum)

    before = signal.signal(signal.SIGTERM, fallback)
    try:
        code, _, err = _run(capsys, "export", "--model", "llama-tiny", "--format", "ours", "-o", tmp_path / "out")
        assert signal.getsignal(signal.SIGTERM) is fallback  # restored after the command
    finally:
        signal.signal(signal.SIGTERM, before)
    assert not missed and code == 128 + signal.SIGTERM and err.strip().endswith("llmscratch: terminated")
    assert list(tmp_path.iterdir()) == []


def test_found_by_a_training_tester(capsys, tmp_path):
    """Session 13's new-user pass over data, tokenizer and pretraining: wrong, silent or missing messages."""
    (tmp_path / "both.yaml").write_text("max_steps: 3\nmax-steps: 4\n")
    assert "'max_steps' and 'max-steps' set the same thing" in _error(capsys, "pretrain", "--config",
                                                                      tmp_path / "both.yaml")
    (tmp_path / "run.toml").write_text("max_steps = 3\n")
    assert "read from .yaml, .yml or .json files" in _error(capsys, "pretrain", "--config", tmp_path / "run.toml")
    text = tmp_path / "t.txt"
    text.write_text("the other thing is the best thing there\n" * 50)
    code, out, err = _run(capsys, "tokenizer", "train", "--input", text, "--vocab-size", "5000", "--min-frequency",
                          "60", "-o", tmp_path / "a.json", "--special-token", "the")
    assert code == 0 and "no pair of tokens left occurs 60 or more times" in out
    assert "the special token 'the' is an ordinary word" in err
    assert "--min-frequency must be >= 1" in _error(capsys, "tokenizer", "train", "--input", text, "--vocab-size",
                                                    "300", "--min-frequency", "0", "-o", tmp_path / "b.json")
    assert "(one comma between two)" in _error(capsys, "tokenizer", "decode", "--tokenizer", tmp_path / "a.json",
                                               "--ids", "1,2,,3")
    assert _run(capsys, "tokenizer", "decode", "--tokenizer", tmp_path / "a.json", "--ids", "116, 104 ,101")[1] == "the"
    # a token file trains with the tokenizer it was made with, unless another is given
    assert _run(capsys, "data", "tokenize", text, "-o", tmp_path / "t.bin", "--tokenizer", tmp_path / "a.json")[0] == 0
    code, out, _ = _run(capsys, "pretrain", "--data", tmp_path / "t.bin", "--model", "gpt2-tiny", "--max-steps", "1",
                        "--batch-size", "2", "--context", "16", "--no-progress", "--out", tmp_path / "own")
    from llmscratch.tokenizer import load_tokenizer
    from llmscratch.weights import load_model

    own = load_tokenizer(tmp_path / "a.json")
    assert code == 0 and load_model(tmp_path / "own" / "final").tokenizer.vocab_size == own.vocab_size < 50257
    # a tiny run trained with gpt2's tokenizer: its folder names the tokenizer, and tokenizer commands read it
    from conftest import mirror_file

    mirror_file("gpt2/vocab.bpe")
    run = tmp_path / "run"
    code, out, _ = _run(capsys, "pretrain", "--data", text, "--model", "gpt2-tiny", "--max-steps", "30",
                        "--batch-size", "2", "--context", "16", "--no-progress", "--out", run)
    assert code == 0 and "note: --max-steps is 30, but 1 epoch of this data is " in out
    code, out, _ = _run(capsys, "pretrain", "--data", text, "--model", "gpt2-tiny", "--max-steps", "30",
                        "--batch-size", "2", "--context", "16", "--no-progress", "--out", run, "--resume")
    assert code == 0 and "nothing left to train: the run was at step" in out and "trained" not in out
    assert _run(capsys, "tokenizer", "encode", "--tokenizer", run / "final", "--text", "The data")[1].split() == [
        "464", "1366"]
    assert "is a training run, not a model folder: its model is" in _error(capsys, "model", "info", run)
