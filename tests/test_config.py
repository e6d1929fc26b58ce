"""Typed settings -> flags: every generated flag's default is its field's, values are checked where they enter
(command line, config file, Python), and a bad one is a one-line error with exit status 2."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from llmscratch.cli import build_parser, main
from llmscratch.config import Flag, _Given, add_flags, flags_of, from_args, nested, setting, to_argv
from llmscratch.train.config import TrainConfig
from llmscratch.utils import UserError

REQUIRED = {"data": "x.txt", "model": "m", "repository": "r", "model_data": "m.tar.gz", "image_uri": "i",
            "role": "arn:aws:iam::123456789012:role/r", "endpoint_name": "e", "prompt": "p",
            "responses": "r.jsonl", "base_url": "http://127.0.0.1:1/v1",
            "to": "int8", "out": "q"}  # fields without default


def generated_parsers():
    """(command, its parser, its settings class) for every subcommand built by the generator."""
    found = []

    def walk(parser, words):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])
        cls = parser.get_default("_settings")
        if cls is not None:
            found.append((" ".join(words), parser, cls))

    walk(build_parser(), [])
    return found


def instance(cls):
    """`cls` built by its own constructor (default factories and all), required fields filled in."""
    names = {f.name for f in dataclasses.fields(cls) if f.metadata.get("required")}
    return cls(**{k: v for k, v in REQUIRED.items() if k in names})


def lookup(obj, dest: str):
    for attr in dest.split("."):
        obj = getattr(obj, attr)
    return obj


def test_the_generated_commands_are_the_public_ones():
    commands = {c for c, _, _ in generated_parsers()}
    assert {"pretrain", "finetune classify", "finetune instruct", "finetune dpo", "demo", "bench generate",
            "bench train", "evaluate generate", "evaluate judge", "evaluate metrics"} <= commands


@pytest.mark.parametrize(("command", "parser", "cls"), generated_parsers(), ids=lambda x: str(x)[:20])
def test_every_flag_default_is_the_field_default(command, parser, cls):
    expected = instance(cls)
    actions = [a for a in parser._actions if isinstance(a, _Given)]
    assert {a.dest for a in actions} == {f.dest for f in flags_of(cls)}
    for action in actions:
        if action.dest not in REQUIRED:  # a required field has no default (None)
            assert action.default == lookup(expected, action.dest), (command, action.option_strings)
        assert action.help, (command, action.option_strings)  # every flag explains itself
    argv = [w for k, v in REQUIRED.items() for f in flags_of(cls) if f.path == (k,) and f.meta.get("required")
            for w in (f.option, v)]
    assert from_args(cls, parser.parse_args(argv)) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["pretrain", "--data", "x", "--grad-clip", "-1"], "--grad-clip must be >= 0, got -1"),
        (["pretrain", "--data", "x", "--lr", "inf"], "--lr must be a finite number, got inf"),
        (["pretrain", "--data", "x", "--grad-clip", "nan"], "--grad-clip must be a finite number, got nan"),
        (["pretrain", "--data", "x", "--context", "0"], "--context must be >= 2, got 0"),
        (["pretrain", "--data", "x", "--stride", "0"], "--stride must be >= 1, got 0"),
        (["pretrain", "--data", "x", "--batch-size", "2.5"], "--batch-size must be an integer, got '2.5'"),
        (["pretrain", "--data", "x", "--lr", "fast"], "--lr must be a number, got 'fast'"),
        (["pretrain", "--data", "x", "--schedule", "linear"], "--schedule must be one of cosine, constant"),
        (["pretrain", "--data", "x", "--dropout", "1"], "--dropout must be < 1, got 1"),
        (["finetune", "classify", "--model", "m", "--lora-alpha", "nan"], "--lora-alpha must be a finite number"),
        (["finetune", "classify", "--model", "m", "--lora-rank", "0"], "--lora-rank must be >= 1, got 0"),
        (["finetune", "classify", "--model", "m", "--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        (["finetune", "classify", "--model", "m", "--max-seconds", "-5"], "--max-seconds must be > 0, got -5"),
        (["finetune", "instruct", "--model", "m", "--max-length", "1"], "--max-length must be >= 2, got 1"),
        (["finetune", "instruct", "--model", "m", "--prompt-format", "vicuna"], "--prompt-format must be one of"),
        (["evaluate", "generate", "--model", "m", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["evaluate", "judge", "--responses", "r", "--base-url", "u", "--model", "m", "--timeout", "0"],
         "--timeout must be > 0, got 0"),
        (["finetune", "dpo", "--model", "m", "--beta", "0"], "--beta must be > 0, got 0"),
        (["finetune", "dpo", "--model", "m", "--max-length", "1"], "--max-length must be >= 2, got 1"),
        (["finetune", "dpo", "--model", "m", "--reference", "copy"], "--reference must be one of live, precomputed"),
        (["demo", "--steps", "0"], "--steps must be >= 1, got 0"),
        (["demo", "--threads", "0"], "--threads must be >= 1, got 0"),
        (["bench", "generate", "--tokens", "5,0"], "--tokens must be >= 1, got 0"),
        (["bench", "train", "--repeats", "nan"], "--repeats must be an integer, got 'nan'"),
    ],
)
def test_bad_numbers_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("batch-size: 2.5\n", "batch-size must be an integer, got 2.5"),
        ("lr: .inf\n", "lr must be a finite number, got inf"),
        ("grad_clip: -1\n", "grad_clip must be >= 0, got -1"),
        ("context: 0\n", "context must be >= 2, got 0"),
        ("epochs: true\n", "epochs must be an integer, got True"),
        ("no-progress: maybe\n", "no-progress must be true or false"),
        ("[1, 2]\n", "must hold a mapping"),
        ("lr: [\n", "cannot parse config file"),
    ],
)
def test_bad_config_file_values(tmp_path, capsys, text, message):
    path = tmp_path / "run.yaml"
    path.write_text("data: x.txt\n" + text if not text.startswith("[") else text)
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--config", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_config_file_not_utf8(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_bytes(b'{"data": "\xff"}')
    with pytest.raises(SystemExit):
        main(["pretrain", "--config", str(path)])
    assert "cannot parse config file" in capsys.readouterr().err


def test_python_construction_checks_too():
    with pytest.raises(UserError, match="batch_size must be an integer, got 2.5"):
        TrainConfig(batch_size=2.5)
    with pytest.raises(UserError, match="lr must be a finite number, got nan"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(UserError, match="betas must be < 1, got 1"):
        TrainConfig(betas=(0.9, 1.0))
    assert TrainConfig(grad_clip=0).grad_clip == 0  # 0 means no clipping, as documented


@dataclasses.dataclass
class Toy:
    name: str | None = setting(None, "a name", required=True)
    size: int = setting(3, "a size", ge=1)
    tags: list[str] | None = setting(None, "tags")
    quick: bool = setting(False, "small", preset="small")
    balanced: bool | None = setting(None, "balance", switches={"--balanced": True, "--full": False})
    train: TrainConfig = nested(TrainConfig, ("lr", "progress"), lr=0.5)

    @classmethod
    def small(cls):
        return cls(name="preset", size=1, quick=True)


def parse_toy(argv, tmp_path=None, file_text=None):
    p = argparse.ArgumentParser()
    add_flags(p, Toy)
    if file_text is not None:
        (tmp_path / "t.yaml").write_text(file_text)
        argv = [*argv, "--config", str(tmp_path / "t.yaml")]
    return from_args(Toy, p.parse_args(argv))


def test_layers_switches_lists_presets_and_argv_round_trip(tmp_path):
    t = parse_toy(["--name", "a", "--tags", "x, y", "--full", "--lr", "0.25", "--no-progress"])
    assert (t.name, t.tags, t.balanced, t.train.lr, t.train.progress) == ("a", ["x", "y"], False, 0.25, False)
    assert t.size == 3 and t.train.epochs == 1
    assert parse_toy(to_argv(t)) == t  # the command line of a config gives that config back
    f = parse_toy(["--size", "7"], tmp_path, "name: b\nsize: 5\ntags: [u]\nbalanced: true\nlr: 0.125\n")
    assert (f.name, f.size, f.tags, f.balanced, f.train.lr) == ("b", 7, ["u"], True, 0.125)  # flags beat the file
    q = parse_toy(["--quick", "--size", "2"])
    assert (q.name, q.size, q.quick) == ("preset", 2, True)  # the preset's defaults, then the flags
    with pytest.raises(UserError, match="--name is required"):
        parse_toy([])
    with pytest.raises(UserError, match="unknown setting 'epochs'"):  # a field of the nested config not exposed
        parse_toy([], tmp_path, "name: c\nepochs: 3\n")
    with pytest.raises(SystemExit):
        parse_toy(["--balanced", "--full"])  # switches of one field exclude each other


def test_each_switch_of_a_field_gets_its_own_help():
    @dataclasses.dataclass
    class Two:
        balanced: bool | None = setting(None, "--balanced: undersample (default A); --full: every row",
                                        switches={"--balanced": True, "--full": False})
        compiled: bool = setting(True, "the compiled cases", switches={"--compile": True, "--no-compile": False})

    p = argparse.ArgumentParser()
    add_flags(p, Two)
    helps = {a.option_strings[0]: a.help for a in p._actions if a.option_strings}
    assert (helps["--balanced"], helps["--full"]) == ("undersample (default A)", "every row")
    assert (helps["--compile"], helps["--no-compile"]) == ("the compiled cases", "see --compile")


def test_flag_names_and_keys():
    flags = {f.dest: f for f in flags_of(Toy)}
    assert isinstance(flags["train.lr"], Flag) and flags["train.lr"].option == "--lr"
    assert flags["train.progress"].keys() == {"progress": None, "no_progress": False}


def test_the_cli_builds_its_flags_without_importing_torch():
    """`llmscratch --help` and every command's flags come from typed configs in modules that do not load torch
    (seconds of start-up for commands such as `deploy verify` that never need it)."""
    import subprocess
    import sys

    code = "import sys; from llmscratch.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
