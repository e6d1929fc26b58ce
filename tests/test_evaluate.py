"""Evaluation: responses files (generate, resume), the judge against a real HTTP server on loopback, metrics."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from llmscratch.evaluate.judge import JudgeSpec, judge_prompt, parse_score, run_compare, run_judge
from llmscratch.evaluate.metrics import MetricsSpec, exact_match, lcs_length, rouge_l, run_metrics
from llmscratch.evaluate.responses import GenerateSpec, read_jsonl, run_generate
from llmscratch.model import LlamaConfig, build_model
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.byte_level import bytes_to_unicode
from llmscratch.utils import UserError
from llmscratch.weights.ours import save_pretrained

# ---------------------------------------------------------------------------------------------------------
# Metrics worked by hand
# ---------------------------------------------------------------------------------------------------------


def test_rouge_l_by_hand():
    # LCS "the cat on the mat" = 5 of 6 tokens each way: P = R = 5/6
    assert rouge_l("The cat sat on the mat.", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "a c" = 2: P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5
    assert rouge_l("a b c d", "a c") == pytest.approx(2 / 3)
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0 and rouge_l("x y", "z") == 0.0
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example (CLRS)
    assert exact_match("  Paris\n", "Paris") and not exact_match("paris", "Paris")


def test_parse_score():
    assert [parse_score(a) for a in ("85", " 100\n", "7.", "0")] == [85, 100, 7, 0]
    assert [parse_score(a) for a in ("Eighty", "85/100", "score: 85", "101", "", "8 5")] == [None] * 6


def test_judge_prompt_is_the_books():
    rec = {"instruction": "Name a colour.", "input": "", "output": "Red.", "response": "Blue."}
    assert judge_prompt(rec) == (
        "Given the input `Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.` and correct output `Red.`, score the model "
        "response `Blue.` on a scale from 0 to 100, where 100 is the best score. Respond with the integer number "
        "only."
    )


# ---------------------------------------------------------------------------------------------------------
# A stand-in judge: a real HTTP server on loopback speaking the chat-completions API
# ---------------------------------------------------------------------------------------------------------


class Judge:
    """Scores by the response it finds in the prompt: "good" 90, "bad" answered in words, "fail" HTTP 500 while
    `failing`; the first request of all gets HTTP 503 (retried), every request HTTP 401 while `refusing`. Records
    every request body."""

    def __init__(self):
        self.requests: list[dict] = []
        self.failing = False
        self.refusing = False
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with judge.lock:
                    judge.requests.append({**body, "path": self.path, "auth": self.headers.get("Authorization")})
                    first = len(judge.requests) == 1
                prompt = body["messages"][0]["content"]
                if judge.refusing:
                    self.send_response(401)
                    self.end_headers()
                    return
                if first or (judge.failing and "fail" in prompt):
                    self.send_response(503 if first else 500)
                    self.end_headers()
                    return
                answer = judge.answer(prompt)
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, prompt: str) -> str:
        if "response 1" in prompt:
            return "1"
        if "`good" in prompt:
            return "90"
        if "`bad" in prompt:
            return "I would say about eighty"
        return "50"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge():
    j = Judge()
    yield j
    j.close()


def write_responses(path, responses, instruction="Say something."):
    rows = [{"index": i, "instruction": f"{instruction} {i}", "input": "", "output": "ok", "response": r,
             "model": "m", "prompt_format": "alpaca", "data": "d", "split": "test"} for i, r in enumerate(responses)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_judge_scores_over_http(tmp_path, judge, monkeypatch):
    path = write_responses(tmp_path / "r.jsonl", ["good one", "bad one", "fine", "good two"])
    monkeypatch.setenv("JUDGE_KEY", "sekret")
    spec = JudgeSpec(str(path), judge.url, "judge-model", api_key_env="JUDGE_KEY", concurrency=3, retry_wait=0.01,
                     progress=False)
    summary = run_judge(spec)
    assert summary["mean"] == pytest.approx((90 + 50 + 90) / 3)
    assert (summary["scored"], summary["not_integer"], summary["total"]) == (3, 1, 4)
    scores = {r["index"]: r for r in read_jsonl(tmp_path / "r.scores.jsonl")[0]}
    assert [scores[i]["score"] for i in range(4)] == [90, None, 50, 90]
    assert scores[1]["answer"] == "I would say about eighty"  # kept, counted, never dropped in silence
    assert (tmp_path / "r.scores.png").stat().st_size > 1000 and (tmp_path / "r.scores.summary.json").is_file()
    first = judge.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sekret"
    assert first["temperature"] == 0 and first["seed"] == 123 and first["model"] == "judge-model"
    assert len(judge.requests) == 5  # four items, one of them retried after the 503
    run_judge(spec)  # everything is scored already: no request
    assert len(judge.requests) == 5


def test_judge_unreachable_keeps_partial_scores_and_resumes(tmp_path, judge):
    path = write_responses(tmp_path / "r.jsonl", ["good", "fail here", "fine", "good"])
    judge.failing = True
    spec = JudgeSpec(str(path), judge.url, "j", concurrency=1, retries=2, retry_wait=0.01, progress=False)
    with pytest.raises(UserError, match="did not answer after 3 attempts.*saved in .*run the same command again"):
        run_judge(spec)
    kept = read_jsonl(tmp_path / "r.scores.jsonl")[0]
    assert [r["index"] for r in kept] == [0]  # scored before the failure, concurrency 1: in order
    judge.failing = False
    before = len(judge.requests)
    summary = run_judge(spec)
    assert summary["total"] == 4 and len(judge.requests) - before == 3  # only the three missing ones asked
    with pytest.raises(UserError, match="answers of the judge 'j'"):
        run_judge(JudgeSpec(str(path), judge.url, "other-judge", progress=False))


def test_judge_connection_refused_is_a_clear_error(tmp_path, judge):
    path = write_responses(tmp_path / "r.jsonl", ["good"])
    url = judge.url
    judge.close()
    with pytest.raises(UserError, match="did not answer after 2 attempts"):
        run_judge(JudgeSpec(str(path), url, "j", retries=1, retry_wait=0.01, timeout=2, progress=False))
    judge.server = type("Closed", (), {"shutdown": lambda s: None, "server_close": lambda s: None})()


def test_compare_swaps_order_for_half(tmp_path, judge):
    a = write_responses(tmp_path / "a.jsonl", [f"a{i}" for i in range(10)])
    b = write_responses(tmp_path / "b.jsonl", [f"b{i}" for i in range(10)])
    result = run_compare(JudgeSpec(str(a), judge.url, "j", retry_wait=0.01, progress=False), str(a), str(b))
    # the stand-in judge always prefers the answer shown first: A wins exactly where A was shown first
    assert result["pairs"] == 10 and result["wins_a"] == 5 and result["wins_b"] == 5
    assert result["first_shown_won"] == 10 and result["win_rate_a"] == 0.5
    other = write_responses(tmp_path / "c.jsonl", ["x"] * 10, instruction="Another data set")
    with pytest.raises(UserError, match="different entries"):
        run_compare(JudgeSpec(str(a), judge.url, "j", progress=False), str(a), str(other))


# ---------------------------------------------------------------------------------------------------------
# Generation and the reference loss with a tiny model
# ---------------------------------------------------------------------------------------------------------


def tiny_model_folder(tmp_path):
    specials = {"<|endoftext|>": 256}
    vocab = [bytes_to_unicode()[b] for b in range(256)] + list(specials)
    tok = Tokenizer.from_vocab_and_merges(vocab, [], specials, eos_id=256)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=257, context_length=512, emb_dim=32, n_layers=2, n_heads=2, n_kv_heads=1,
                         hidden_dim=64, head_dim=16)
    return save_pretrained(build_model(config), tok, tmp_path / "tiny")


def test_generate_is_resumable_and_checks_the_file(tmp_path):
    folder = tiny_model_folder(tmp_path)
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"instruction": f"Count to {i}.", "input": "", "output": str(i)} for i in range(7)]))
    out = tmp_path / "responses.jsonl"
    spec = GenerateSpec(model=str(folder), data=str(data), split="all", out=str(out), max_new_tokens=5,
                        batch_size=3, progress=False)
    summary = run_generate(spec)
    assert summary["answered"] == 7 and summary["prompt_format"] == "alpaca"  # the tiny model has no template
    rows = read_jsonl(out)[0]
    assert sorted(r["index"] for r in rows) == list(range(7))
    assert all(r["prompt_format"] == "alpaca" and r["output"] == str(r["index"]) for r in rows)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]) + '{"index": 5, "instr')  # a cut-off last line
    again = run_generate(spec)
    assert (again["answered"], again["already"]) == (3, 4)
    by_index = {r["index"]: r["response"] for r in read_jsonl(out)[0]}
    assert by_index == {r["index"]: r["response"] for r in rows}  # greedy: the same answers, batched or not
    relative = os.path.relpath(folder)  # the same model folder named another way: the same run, nothing to do
    assert run_generate(GenerateSpec(**{**spec.__dict__, "model": relative}))["answered"] == 0
    with pytest.raises(UserError, match="same file as the input"):
        run_generate(GenerateSpec(**{**spec.__dict__, "out": str(data)}))
    with pytest.raises(UserError, match="prompt_format 'alpaca'"):
        run_generate(GenerateSpec(**{**spec.__dict__, "prompt_format": "phi3"}))
    data.write_text(json.dumps([{"instruction": "Other.", "input": "", "output": "x"}] * 7))
    with pytest.raises(UserError, match="another data set"):
        run_generate(spec)
    corpus = tmp_path / "corpus.txt"  # a user's text given as -o by mistake: never appended to
    corpus.write_text("Every effort moves you.\nAnd on.\n")
    with pytest.raises(UserError, match="not a responses file"):
        run_generate(GenerateSpec(**{**spec.__dict__, "out": str(corpus)}))
    assert corpus.read_text() == "Every effort moves you.\nAnd on.\n"
    with pytest.raises(UserError, match="the test split of .* is empty .*split=all"):  # 7 entries: none in test
        run_generate(GenerateSpec(**{**spec.__dict__, "split": "test"}))


def test_metrics_reference_loss(tmp_path):
    folder = tiny_model_folder(tmp_path)
    responses = tmp_path / "r.jsonl"
    rows = [{"index": 0, "instruction": "Say hi.", "input": "", "output": "hi", "response": "hi",
             "prompt_format": "alpaca"},
            {"index": 1, "instruction": "Say bye.", "input": "x", "output": "bye now", "response": "Bye",
             "prompt_format": "alpaca"}]
    responses.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_metrics(MetricsSpec(str(responses), model=str(folder), progress=False))
    assert r["exact_match"] == 0.5 and r["rouge_l_f1"] == pytest.approx((1 + 2 * 1 * 0.5 / 1.5) / 2)
    assert r["reference_tokens"] == len("hi") + 1 + len("bye now") + 1  # response bytes + end token each
    assert 0 < r["reference_loss"] and r["reference_perplexity"] == pytest.approx(torch.tensor(
        r["reference_loss"]).exp().item(), rel=1e-5)
    full = run_metrics(MetricsSpec(str(responses), model=str(folder), include_prompt=True, progress=False))
    assert full["reference_tokens"] > r["reference_tokens"]
    assert json.loads((tmp_path / "r.metrics.json").read_text())["reference_masked_prompt"] is False
    # -o never replaces the responses file, nor a user's file without overwrite; an earlier metrics file it does
    with pytest.raises(UserError, match="same file as the input"):
        run_metrics(MetricsSpec(str(responses), out=str(responses), progress=False))
    data = tmp_path / "data.json"
    data.write_text("[1, 2]")
    with pytest.raises(UserError, match="data.json exists and is not a metrics file of ours"):
        run_metrics(MetricsSpec(str(responses), out=str(data), progress=False))
    assert data.read_text() == "[1, 2]"
    run_metrics(MetricsSpec(str(responses), out=str(tmp_path / "r.metrics.json"), progress=False))
    run_metrics(MetricsSpec(str(responses), out=str(data), overwrite=True, progress=False))


def test_preference_answers_are_recorded_and_metrics_compare_with_them(tmp_path):
    folder = tiny_model_folder(tmp_path)
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{"instruction": f"Greet {i}.", "input": "", "output": "hi", "chosen": "Hello!",
                                 "rejected": "What?"} for i in range(3)]))
    out = tmp_path / "responses.jsonl"
    run_generate(GenerateSpec(model=str(folder), data=str(data), split="all", out=str(out), max_new_tokens=3,
                              progress=False))
    rows = read_jsonl(out)[0]
    assert all((r["chosen"], r["rejected"]) == ("Hello!", "What?") for r in rows)
    rows = [{**r, "response": "Hello!"} for r in rows]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chosen = run_metrics(MetricsSpec(str(out), model=str(folder), reference="chosen", progress=False))
    assert (chosen["reference"], chosen["exact_match"], chosen["rouge_l_f1"]) == ("chosen", 1.0, 1.0)
    assert chosen["reference_tokens"] == 3 * (len("Hello!") + 1)  # the chosen answers are scored, not "hi"
    assert run_metrics(MetricsSpec(str(out), reference="rejected"))["exact_match"] == 0.0
    out.write_text(json.dumps({k: v for k, v in rows[0].items() if k != "chosen"}) + "\n")
    with pytest.raises(UserError, match="no 'chosen' answer"):
        run_metrics(MetricsSpec(str(out), reference="chosen"))


def test_cli_judge_and_compare(tmp_path, judge, capsys):
    from llmscratch.cli import main

    a = write_responses(tmp_path / "a.jsonl", ["good", "fine"])
    b = write_responses(tmp_path / "b.jsonl", ["bad", "fine"])
    main(["evaluate", "judge", "--responses", str(a), "--base-url", judge.url, "--model", "j", "--retry-wait", "0",
          "--no-progress"])
    assert "mean score 70.00 over 2 responses" in capsys.readouterr().out
    main(["evaluate", "judge", "--compare", str(a), str(b), "--base-url", judge.url, "--model", "j",
          "-o", str(tmp_path / "ab.jsonl"), "--no-progress"])
    assert "of 2 pairs" in capsys.readouterr().out and (tmp_path / "ab.jsonl").is_file()
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "judge", "--base-url", judge.url, "--model", "j"])
    assert e.value.code == 2 and "either --responses FILE or --compare A B" in capsys.readouterr().err
    for url in ("localhost:11434/v1", "ftp://x/v1", ""):
        with pytest.raises(SystemExit) as e:
            main(["evaluate", "judge", "--responses", str(a), "--base-url", url, "--model", "j"])
        assert e.value.code == 2 and "--base-url must be an http:// or https:// URL" in capsys.readouterr().err
    main(["evaluate", "metrics", "--responses", str(a)])
    assert "ROUGE-L F1" in capsys.readouterr().out


def test_judge_errors_name_parameters_and_the_cli_its_flags(tmp_path, judge, capsys):
    """The base URL is checked where it enters (JudgeSpec, ChatClient); a refused key names api_key_env, which
    the CLI writes as --api-key-env."""
    from llmscratch.cli import main
    from llmscratch.evaluate.judge import ChatClient
    from llmscratch.utils import UserError

    responses = write_responses(tmp_path / "a.jsonl", ["good"])
    for url in ("localhost:11434/v1", "ftp://x/v1", "http://"):
        with pytest.raises(UserError, match="^base_url must be an http:// or https:// URL") as e:
            JudgeSpec(str(responses), url, "j")
        assert e.value.params == ("base_url",)
        with pytest.raises(UserError, match="^base_url must be"):
            ChatClient(url, "j")
    judge.refusing = True
    with pytest.raises(UserError) as e:
        ChatClient(judge.url, "j", retries=0).complete("hi")
    assert str(e.value).endswith("(check the API key: api_key_env)") and "--" not in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["evaluate", "judge", "--responses", str(responses), "--base-url", judge.url, "--model", "j",
              "--retries", "0", "--no-progress"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert e.value.code == 2 and "answered HTTP 401" in err and "(check the API key: --api-key-env). 0 of 1" in err
