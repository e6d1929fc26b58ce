"""Property-based test of the whole command line: every command, with generated values for its numeric, path
and other flags, ends with exit status 0 or 2, never a traceback, and changes no file outside its output path.

Commands and flags are discovered from the argparse parser, so a new command or flag is fuzzed without a change
here. What each command runs with when a flag is left alone is its BASE (valid tiny inputs: a 2-layer model, a
few lines of text). Commands whose real work takes more than a second or so are limited to their validation path:
STOP_AT names the function where their long work starts (training loop, benchmark timing, downloads); the
fuzzer replaces it with a stub, and reaching it counts as success (every check before it ran). Flags that bound
the run time are in FIXED, with the reason. A command missing from BASE runs with generated values for its
required arguments and a time limit (LIMIT_S): one that runs longer fails and must be added to the tables.

LLMSCRATCH_FUZZ_EXAMPLES=N runs N examples per command (default: a few, so the whole file takes well under a
minute); LLMSCRATCH_FUZZ_REPORT=FILE appends one JSON line per case, which `python tests/fuzz_table.py FILE`
turns into the table of docs/bad-input.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import signal
import sys
import traceback
from pathlib import Path

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from llmscratch.cli import build_parser, main  # noqa: E402

# Valid tiny inputs per command ({name} = a fixture path, {out} = the output area). Positionals come first.
BASE: dict[str, list[str]] = {
    "tokenizer train": ["--input", "{txt}", "--vocab-size", "270", "-o", "{out}/tok.json"],
    "tokenizer encode": ["--tokenizer", "{tok}", "--text", "hello world"],
    "tokenizer decode": ["--tokenizer", "{tok}", "--ids", "104 105"],
    "data list": [],
    "data fetch": ["the-verdict", "--quiet"],
    "data path": ["the-verdict"],
    "data tokenize": ["{txt}", "-o", "{out}/t.bin", "--tokenizer", "{tok}", "--quiet"],
    "model info": ["gpt2-tiny"],
    "model list": [],
    "models list": [],
    "models fetch": ["gpt2"],
    "models path": ["gpt2"],
    "models remove": ["gpt2"],
    "generate": ["--model", "{model}", "--prompt", "hello", "--max-new-tokens", "3"],
    "chat": ["--model", "{model}", "--message", "hello", "--max-new-tokens", "3", "--template", "{template}"],
    "export": ["--model", "{model}", "-o", "{out}/export"],
    "classify": ["--model", "{classifier}", "--text", "see you at home"],
    "finetune classify": ["--model", "{model}", "--data", "{tsv}", "--text-column", "message", "--label-column",
                          "kind", "--epochs", "1", "--batch-size", "4", "--eval-every", "0", "--out", "{out}/clf",
                          "--no-progress"],
    "pretrain": ["--data", "{corpus}", "--tokenizer", "{tok}", "--model", "gpt2-tiny", "--context", "16",
                 "--batch-size", "2", "--max-steps", "2", "--max-seconds", "20", "--eval-every", "1",
                 "--out", "{out}/run", "--no-progress"],
    "demo": ["--quick", "--real-model", "none", "--corpus", "{corpus}", "--out", "{out}/demo", "--no-progress"],
    "bench generate": ["--quick", "--no-transformers", "--out", "{out}/bench", "--no-progress"],
    "bench train": ["--quick", "--no-transformers", "--out", "{out}/bench", "--no-progress"],
    "bench serve": ["--model", "gpt2-tiny", "--out", "{out}/bench"],
    "serve": ["--model", "{model}", "--port", "0"],
    "finetune instruct": ["--model", "{model}", "--data", "{instructions}", "--epochs", "1", "--batch-size", "2",
                          "--out", "{out}/instruct", "--no-progress"],
    "finetune dpo": ["--model", "{model}", "--data", "{preferences}", "--epochs", "1", "--batch-size", "2",
                     "--out", "{out}/dpo", "--no-progress"],
    "evaluate generate": ["--model", "{model}", "--data", "{instructions}", "-o", "{out}/responses.jsonl",
                          "--limit", "1", "--max-new-tokens", "2", "--no-progress"],
    "evaluate judge": ["--responses", "{responses}", "--base-url", "http://127.0.0.1:9/v1", "--model", "judge",
                       "--retries", "0", "--timeout", "2", "--no-progress"],
    "evaluate metrics": ["--responses", "{responses}", "--model", "{model}", "-o", "{out}/metrics.json",
                         "--no-progress"],
    "deploy package": ["--model", "{model}", "-o", "{out}/model.tar.gz", "--no-progress"],
    "deploy verify": ["{model}"],
    "deploy build-image": ["--repository", "llmscratch"],
    "deploy sagemaker": ["--model-data", "s3://bucket/model.tar.gz", "--image-uri", "1.dkr.ecr.x/llmscratch",
                         "--role", "arn:aws:iam::1:role/x", "--region", "us-east-1", "--no-progress"],
    "deploy delete": ["--endpoint-name", "llmscratch", "--region", "us-east-1"],
    "deploy invoke": ["--endpoint-name", "llmscratch", "--prompt", "hi", "--region", "us-east-1"],
}
# Where a command's long work starts ("module:function" or a class): replaced by a stub during the fuzz, so the
# command is checked up to there (every value checked where it enters) and stops in well under a second.
STOP_AT: dict[str, list[str]] = {
    "pretrain": ["llmscratch.train.trainer:Trainer._epoch"],  # after the output folder and --resume are handled
    "finetune classify": ["llmscratch.train.trainer:Trainer._epoch"],
    "demo": ["llmscratch.train.trainer:Trainer._epoch"],
    "bench generate": ["llmscratch.bench.common:interleaved_times"],
    "bench train": ["llmscratch.bench.common:interleaved_times"],
    "models fetch": ["llmscratch.weights.registry:fetch_source"],  # the download itself (hub, pip)
    "finetune instruct": ["llmscratch.train.trainer:Trainer._epoch"],
    "finetune dpo": ["llmscratch.train.trainer:Trainer._epoch"],
    "serve": ["uvicorn:Server.run"],  # after the model, flags and socket are checked: serving runs until stopped
    "bench serve": ["llmscratch.bench.serve:start_server"],  # a server process and timed clients
}
# Flags left alone: they bound the run time, or start minutes of work (torch.compile).
FIXED: dict[str, dict[str, str]] = {
    "pretrain": {"--max-seconds": "bounds the run", "--compile": "compiling takes minutes",
                 "--tensorboard": "an optional package"},
    "bench train": {"--compile": "compiling takes minutes", "--quick": "the full benchmark takes minutes"},
    "bench generate": {"--quick": "the full benchmark takes minutes"},
    "generate": {"--compile": "compiling takes minutes"},
    "demo": {"--quick": "the full demo takes minutes"},
    "evaluate judge": {"--retries": "bounds the run", "--retry-wait": "bounds the run", "--timeout": "bounds the run"},
    "deploy sagemaker": {"--wait": "waits for AWS", "--wait-timeout": "bounds the wait",
                         "--poll-seconds": "bounds the wait"},
}
# Numeric flags that still accept NaN, in modules their owners are rewriting (issue 17, typed configs): listed in
# docs/bad-input.md; remove an entry once its config checks it.
KNOWN_NAN: dict[tuple[str, str], str] = {}  # (command, flag): owner, while a float flag still accepts NaN
# (command, flag): a traceback that value still causes, in a module another engineer owns (listed in the docs).
KNOWN_CRASH: dict[tuple[str, str, str | None], str] = {  # value None: any value
}
EXAMPLES = int(os.environ.get("LLMSCRATCH_FUZZ_EXAMPLES", "0"))
SLOW = {"pretrain", "finetune classify", "finetune instruct", "finetune dpo", "demo", "bench generate",
        "bench train", "bench serve", "serve"}
LIMIT_S = 120  # a command still running after this is a failure (add it to BASE/STOP_AT/FIXED)

INTS = ["-1", "0", "1", "2", "7", "-1000000", "1000000000000", "2.5", "nan", "1e3", ""]
FLOATS = ["-1", "0", "0.5", "1", "2.5", "nan", "inf", "-inf", "1e308", "1e-320", "1e400", "-0.0", "x", ""]
TEXTS = ["", " ", "x", "hello world", "-1", "0", "nan", "é🙂 ü", "a,b,,c", "1,2,3", "--", "cuda", "auto"]
INPUT_PATHS = ["{txt}", "{bad_utf8}", "{empty}", "{model}", "{hf}", "{tok}", "{tsv}", "{bad_tsv}", "{user}",
               "{run}", "{missing}", "{below_file}", "{readonly}", "{fx}", "{link_to_txt}", "gpt2-tiny", "llama-tiny",
               "{yaml}"]
OUTPUT_PATHS = ["{out}/new", "{out}/deeper/new", "{user}", "{txt}", "{model}", "{run}", "{readonly}/new",
                "{below_file}", "{link_to_txt}", "{out}", "{hf}", "{project}"]
USERS_FILE = "notes.txt"  # in the fixture's user folder: never changed, even when that folder is an output
PATH_WORDS = ("file", "folder", "path", "dir", "model", "data", "corpus", "tokenizer", "config", "template", "input")


class _TooLong(BaseException):
    """Raised by the alarm when a command runs past LIMIT_S."""


class _ReachedWork(BaseException):
    """Raised by a STOP_AT stub: the command got through its checks to its long work."""


# ---------------------------------------------------------------------------------------------- discovery


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, parser) of every runnable command."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        yield " ".join(prefix), parser
        return
    for name, child in sub.choices.items():
        yield from leaf_commands(child, (*prefix, name))


COMMANDS = dict(leaf_commands(build_parser()))


def fuzzable(command: str) -> list[argparse.Action]:
    """The command's arguments the fuzzer varies (all but help, version and FIXED)."""
    fixed = FIXED.get(command, {})
    return [a for a in COMMANDS[command]._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))
            and not set(a.option_strings) & set(fixed)]


def is_output(a: argparse.Action) -> bool:
    return bool({"-o", "--out", "--output", "--out-dir"} & set(a.option_strings)) or a.dest in ("out", "output")


def setting_types(command: str) -> dict[str, object]:
    """{dest: value type} of a command whose flags come from a typed config (llmscratch.config), where argparse
    itself holds no type (the config parses and checks the values)."""
    cls = COMMANDS[command].get_default("_settings")
    if cls is None:
        return {}
    from llmscratch.config import _parts, flags_of

    return {f.dest: _parts(f.type)[0] for f in flags_of(cls)}


def kind(a: argparse.Action, command: str | None = None) -> str:
    """switch, choice, int, float, output, path or text."""
    if a.nargs == 0:
        return "switch"
    if a.choices:
        return "choice"
    typ = a.type or (setting_types(command).get(a.dest) if command else None)
    if typ in (int, float):
        return typ.__name__
    if is_output(a):
        return "output"
    words = f"{a.dest} {a.metavar or ''} {a.help or ''}".lower()
    return "path" if any(w in words for w in PATH_WORDS) else "text"


def values(a: argparse.Action, command: str) -> st.SearchStrategy:
    k = kind(a, command)
    pools = {"int": INTS, "float": FLOATS, "output": OUTPUT_PATHS, "path": INPUT_PATHS + TEXTS[:3],
             "text": TEXTS + INPUT_PATHS[:2]}
    if k == "switch":
        return st.just(None)
    if k == "choice":
        return st.sampled_from([*map(str, a.choices), "bogus"])
    return st.sampled_from(pools[k])


def with_value(command: str, argv: list[str], a: argparse.Action, value: str | None) -> list[str]:
    """`argv` with argument `a` set to `value` (replacing the base's value)."""
    if not a.option_strings:  # a positional: its index among the positionals
        positionals = [x for x in COMMANDS[command]._actions if not x.option_strings]
        i = positionals.index(a)
        return [*argv[:i], value, *argv[i + 1:]] if i < len(argv) else [*argv, value]
    out, skip = [], False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok in a.option_strings:
            skip = a.nargs != 0
            continue
        out.append(tok)
    return [*out, a.option_strings[-1]] if value is None else [*out, a.option_strings[-1], value]


@st.composite
def cases(draw, command: str) -> list[str]:
    """A base command line with one to three of its arguments set to generated values."""
    actions = fuzzable(command)
    argv = list(BASE.get(command, []))
    if command not in BASE:  # a new command: its required arguments from the same pools
        for a in actions:
            if a.required or not a.option_strings:
                argv = with_value(command, argv, a, draw(values(a, command)))
    if not actions:
        return argv
    for a in draw(st.lists(st.sampled_from(actions), min_size=1, max_size=3, unique_by=id)):
        argv = with_value(command, argv, a, draw(values(a, command)))
    return argv


# ---------------------------------------------------------------------------------------------- fixture tree


def spam_table(path: Path, n: int = 24) -> None:
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["message", "kind"])
        for i in range(n):
            words = [rng.choice(["ok", "see", "you", "at", "home"]) for _ in range(rng.randint(2, 4))]
            w.writerow([" ".join(words + (["$"] if i % 2 else [])), "spam" if i % 2 else "ham"])


def readonly_place(tmp: Path) -> Path:
    """A folder where nothing can be written: /sys for root (its file system refuses), else a chmod 555 one."""
    if os.geteuid() == 0:
        try:
            open("/sys/llmscratch-probe", "w").close()
        except OSError:
            return Path("/sys")
        os.unlink("/sys/llmscratch-probe")
    ro = tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("tree"))


def build_tree(root: Path, classifier: bool = True) -> dict[str, Path]:
    """{name: path} of the fixture files every case may read (and must not change), under `root`; a trained
    classifier folder too with `classifier` (a second's fine-tuning)."""
    from llmscratch.model import GPTConfig, build_model
    from llmscratch.tokenizer import Tokenizer, train
    from llmscratch.weights.hf import export_hf
    from llmscratch.weights.ours import save_pretrained

    fx = root / "fixtures"
    fx.mkdir(parents=True)
    text = "the cat sat on the mat. see you at home later.\n" * 60
    (fx / "a.txt").write_text(text)
    (fx / "corpus.txt").write_text(text * 3)
    (fx / "bad.txt").write_bytes(b"\xff\xfe caf\xe9 \xc3\x28 ok\n")
    (fx / "empty.txt").write_bytes(b"")
    (fx / "run.yaml").write_text("lr: nan\nbatch-size: 2.5\ncontext: -3\n")
    (fx / "chat.jinja").write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:")
    train(text, 300, ["<|endoftext|>"]).save(fx / "tok.json")
    tok = Tokenizer.bytes_only()
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=257, context_length=64, emb_dim=32, n_layers=2, n_heads=4))
    save_pretrained(model, tok, fx / "model")
    export_hf(model, tok, fx / "hf")
    spam_table(fx / "msgs.tsv")
    (fx / "bad.tsv").write_bytes(b"message\tkind\n\xff\xfe\tham\n")
    (fx / "user").mkdir()
    (fx / "user" / USERS_FILE).write_text("mine")
    (fx / "run" / "checkpoints" / "step-1").mkdir(parents=True)
    (fx / "run" / "metrics.jsonl").write_text("{}\n")
    (fx / "run" / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"x")
    (fx / "link.txt").symlink_to(fx / "a.txt")
    entries = [{"instruction": f"Repeat the word {w}.", "input": "", "output": w}
               for w in ("cat", "mat", "home", "later", "see", "you", "at", "sat", "on", "the") * 2]
    (fx / "instructions.json").write_text(json.dumps(entries))
    (fx / "preferences.json").write_text(json.dumps([{**e, "chosen": e["output"], "rejected": "no"} for e in entries]))
    (fx / "responses.jsonl").write_text("".join(json.dumps({"index": i, **e, "response": e["output"]}) + "\n"
                                                for i, e in enumerate(entries[:3])))
    (fx / "project" / "final").mkdir(parents=True)  # a user's project folder with a "final" folder of their own
    (fx / "project" / "final" / USERS_FILE).write_text("mine too")
    paths = {
        "fx": fx, "txt": fx / "a.txt", "corpus": fx / "corpus.txt", "bad_utf8": fx / "bad.txt",
        "empty": fx / "empty.txt", "yaml": fx / "run.yaml", "template": fx / "chat.jinja", "tok": fx / "tok.json",
        "model": fx / "model", "hf": fx / "hf", "tsv": fx / "msgs.tsv", "bad_tsv": fx / "bad.tsv",
        "user": fx / "user", "run": fx / "run", "missing": fx / "missing", "below_file": fx / "a.txt" / "below",
        "link_to_txt": fx / "link.txt", "readonly": readonly_place(root),
        "classifier": fx / "classifier", "project": fx / "project", "instructions": fx / "instructions.json",
        "preferences": fx / "preferences.json", "responses": fx / "responses.jsonl",
    }
    if not classifier:
        return paths
    clf_out = root / "clf"
    code, _, err, _ = run_cli(["finetune", "classify", "--model", str(fx / "model"), "--data", str(fx / "msgs.tsv"),
                               "--text-column", "message", "--label-column", "kind", "--epochs", "1",
                               "--eval-every", "0", "--out", str(clf_out), "--no-progress"], stop_at=[])
    if code == 0:
        (fx / "classifier").mkdir()
        for name in ("classifier.json", "classifier.safetensors"):
            (fx / "classifier" / name).write_bytes((clf_out / name).read_bytes())
    else:  # classify is then checked up to loading its folder
        paths["classifier"] = fx / "model"
    return paths


def checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_symlink():
            out[str(p)] = "link:" + os.readlink(p)
    return out


def outside(path: str, outputs: list[Path]) -> bool:
    """Whether `path` is not one of the outputs, a file inside one, or a file written beside one (out.json,
    out.vocab: a token file's header, a tokenizer's readable view)."""
    p = Path(path)
    for out in outputs:
        if p == out or out in p.parents:
            return False
        if p.parent == out.parent and (p.name.startswith(out.name + ".") or p.stem == out.stem):
            return False
    return True


# ---------------------------------------------------------------------------------------------- running


def _patch_stops(targets: list[str]) -> list[tuple[object, str, object]]:
    """Replace each "module:function" (and every module attribute that is the same function) or
    "module:Class.method" by a stub that raises _ReachedWork; the (owner, name, original) list to undo it."""
    import importlib

    def stub(*args, **kwargs):
        raise _ReachedWork

    undo = []
    for target in targets:
        module, path = target.split(":")
        *owners, name = path.split(".")
        owner = importlib.import_module(module)
        for part in owners:
            owner = getattr(owner, part)
        original = getattr(owner, name)  # fails loudly when a stop point moved
        places = [owner] if owners else [m for m in list(sys.modules.values()) if getattr(m, name, None) is original]
        for place in places:
            undo.append((place, name, original))
            setattr(place, name, stub)
    return undo


def run_cli(argv: list[str], stop_at: list[str]) -> tuple[object, str, str, str | None]:
    """(exit status, stdout, stderr, traceback of an escaped exception) of `llmscratch ARGV`, in this process."""
    out, err = io.StringIO(), io.StringIO()
    env, cwd, threads = dict(os.environ), os.getcwd(), torch.get_num_threads()
    undo = _patch_stops(stop_at)

    def alarm(signum, frame):
        raise _TooLong

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(LIMIT_S)
    tb = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                contextlib.ExitStack() as stack:
            stack.callback(setattr, sys, "stdin", sys.stdin)
            sys.stdin = io.StringIO("")
            main(argv)
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else e.code
    except _ReachedWork:
        code = 0
    except _TooLong:
        code, tb = "too long", f"still running after {LIMIT_S} s: add it to BASE/STOP_AT/FIXED"
    except BaseException:  # noqa: BLE001 - the point of the test
        code, tb = "exception", traceback.format_exc()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        for owner, name, original in undo:
            setattr(owner, name, original)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        torch.set_num_threads(threads)
    return code, out.getvalue(), err.getvalue(), tb


ERROR_LINE = re.compile(r"^llmscratch( [\w-]+)*: error: ")


@dataclasses.dataclass
class Outcome:
    line: str  # the command line run
    code: object  # exit status, or "exception" / "too long"
    message: str  # the last line on stderr (the error), or of the traceback
    traceback: str | None
    stderr: str
    changed: list[str]  # fixture files changed outside the outputs
    nan_flags: list[str]  # float flags given NaN (not in KNOWN_NAN)


def run_case(command: str, template: list[str], tree: dict, out_area: Path) -> Outcome:
    """Run one case and observe it: exit status, message, and the fixture files it changed."""
    argv = [a.format(out=out_area, **tree) for a in template]
    outputs = [Path(argv[i + 1]) for i, a in enumerate(argv[:-1])
               if a in ("-o", "--out", "--output", "--out-dir")]
    before = checksums(tree["fx"])
    code, _, err, tb = run_cli([*command.split(), *argv], STOP_AT.get(command, []))
    after = checksums(tree["fx"])
    changed = sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p)
                     and (outside(p, outputs) or Path(p).name == USERS_FILE))  # a user's file even in an output
    last = (tb or err).strip().splitlines()[-1] if (tb or err).strip() else ""
    nan_flags = [flag for flag, value in zip(argv, argv[1:]) if value == "nan" and (command, flag) not in KNOWN_NAN
                 and any(flag in a.option_strings and kind(a, command) == "float" for a in COMMANDS[command]._actions)]
    _report(command, template, code, last)
    return Outcome(f"llmscratch {command} {' '.join(argv)}", code, last, tb, err, changed, nan_flags)


def check_case(command: str, template: list[str], tree: dict, out_area: Path) -> None:
    o = run_case(command, template, tree, out_area)
    base = BASE.get(command, [])
    pairs = set(zip(template, template[1:])) - set(zip(base, base[1:]))  # (flag, value) the case changed
    if o.traceback is not None and any(c == command and any(pf == f and v in (None, pv) for pf, pv in pairs)
                                       for c, f, v in KNOWN_CRASH):
        return
    assert o.traceback is None, f"{o.line}\n{o.traceback}"
    assert o.code in (0, 2), f"{o.line}\nexit status {o.code}\n{o.stderr[-2000:]}"
    assert "Traceback" not in o.stderr, f"{o.line}\n{o.stderr[-3000:]}"
    assert o.code == 0 or ERROR_LINE.match(o.message), f"{o.line}\nexit 2 without a one-line error:\n{o.stderr[-2000:]}"
    assert not o.changed, f"{o.line}\nchanged files outside the output: {o.changed}"
    assert o.code == 2 or not o.nan_flags, f"{o.line}\naccepted NaN for {o.nan_flags}"


def _report(command: str, template: list[str], code: object, last: str) -> None:
    path = os.environ.get("LLMSCRATCH_FUZZ_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"command": command, "argv": template, "code": code, "error": last[:300]}) + "\n")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_survives_bad_values(command, tree, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # downloads fail at once (their stop points are stubs anyway)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credentials lookup on the network
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # commands with default outputs (runs/...) write here
    examples = EXAMPLES or (2 if command in SLOW else 5)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(cases(command))
    def check(template):
        out_area = tmp_path_factory.mktemp("out")
        check_case(command, template, tree, out_area)

    check()


@pytest.mark.parametrize("command", ["pretrain", "finetune classify"])
def test_training_output_keeps_a_users_folder(command, tmp_path, monkeypatch):
    """A user's folder given as the training output keeps what it holds (final/, best/... that are not ours)."""
    monkeypatch.chdir(tmp_path)
    tree = build_tree(tmp_path / "tree", classifier=False)  # its own: the fuzz cases may already have lost the file
    o = run_case(command, with_value(command, list(BASE[command]), _option(command, "--out"), "{project}"), tree,
                 tmp_path)
    assert o.code in (0, 2) and not o.changed, o.changed


def _option(command: str, flag: str) -> argparse.Action:
    return next(a for a in COMMANDS[command]._actions if flag in a.option_strings)
