"""An LLM judge over any OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp's server, OpenAI, `llmscratch serve`).

- `run_judge`: each response is scored 0-100 with the book's prompt word for word, at temperature 0 and a fixed
  seed. Scores are appended to a scores file next to the responses as they arrive, so an interrupted run keeps
  what it has and a second run asks only for the rest. Answers that are not an integer in 0..100 are kept with
  a null score and counted, never dropped in silence.
- `run_compare`: two responses files to the same entries, judged pairwise; the order in which the two answers
  are shown is swapped for half of the entries (against position bias). Gives the win rate of the first file.

Requests go out through the standard library (urllib), a few at a time, with a timeout and retries with
exponential backoff on connection errors, timeouts, HTTP 429 and 5xx.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from llmscratch.config import check_fields, setting
from llmscratch.evaluate.responses import append_jsonl, read_jsonl, read_responses
from llmscratch.utils import UserError, atomic_path, atomic_write_text, check_not_input


def judge_prompt(record: Mapping) -> str:
    """The book's judge prompt (chapter 7), word for word; the input is the entry in the alpaca format."""
    from llmscratch.data.instruction import alpaca_input

    return (
        f"Given the input `{alpaca_input(record)}` "
        f"and correct output `{record['output']}`, "
        f"score the model response `{record['response']}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def compare_prompt(record: Mapping, first: str, second: str) -> str:
    """The pairwise prompt: which of two responses answers the entry better (1 or 2)."""
    from llmscratch.data.instruction import alpaca_input

    return (
        f"Given the input `{alpaca_input(record)}` "
        f"and correct output `{record['output']}`, "
        f"which model response is better: response 1 `{first}` or response 2 `{second}`? "
        f"Respond with the number 1 or 2 only."
    )


def parse_score(answer: str) -> int | None:
    """The score in a judge's answer when it is only an integer in 0..100 (as the prompt asks), else None."""
    m = re.fullmatch(r"\s*(\d{1,3})\s*\.?\s*", answer or "")
    return int(m.group(1)) if m and int(m.group(1)) <= 100 else None


def parse_choice(answer: str) -> int | None:
    """1 or 2 when the answer is only that number, else None."""
    m = re.fullmatch(r"\s*(?:response\s*)?([12])\s*\.?\s*", (answer or "").lower())
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------------------
# The endpoint
# ---------------------------------------------------------------------------------------------------------


def check_base_url(base_url: str) -> None:
    """UserError unless `base_url` is an http:// or https:// URL with a host (urllib sends to nothing else)."""
    if not re.match(r"https?://[^/\s]+", base_url or ""):
        raise UserError(f"base_url must be an http:// or https:// URL such as http://localhost:11434/v1, got "
                        f"{base_url!r}", params="base_url")


class JudgeUnreachable(UserError):
    """The endpoint did not answer after every retry."""


@dataclass
class ChatClient:
    """POST {base_url}/chat/completions with one user message; temperature 0 and a fixed seed by default."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    retries: int = 4  # attempts after the first
    retry_wait: float = 1.0  # seconds before the first retry, doubled each time (at most 30 s)
    temperature: float = 0.0
    seed: int = 123
    max_tokens: int | None = 16

    def __post_init__(self) -> None:
        check_base_url(self.base_url)

    @property
    def url(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def complete(self, prompt: str) -> str:
        """The text of the endpoint's answer to `prompt`; JudgeUnreachable after the retries, UserError for an
        answer that retrying cannot fix (bad key, unknown model, a reply that is not chat completions)."""
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}],
                "temperature": self.temperature, "seed": self.seed}
        if self.max_tokens:
            body["max_tokens"] = self.max_tokens
        headers = {"Content-Type": "application/json", "User-Agent": "llmscratch"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(30.0, self.retry_wait * 2 ** (attempt - 1)))
            try:
                request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return _answer_text(json.loads(response.read().decode("utf-8")), self.url)
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:200]
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code} {detail}"
                    continue
                raise UserError(f"the judge endpoint {self.url} answered HTTP {e.code}: {detail}"
                                + (" (check the API key: api_key_env)" if e.code in (401, 403) else ""),
                                params="api_key_env") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = str(getattr(e, "reason", None) or e) or type(e).__name__
            except json.JSONDecodeError:
                raise UserError(f"the judge endpoint {self.url} answered with something that is not JSON; is it "
                                "an OpenAI-compatible /v1 base URL?") from None
            except ValueError as e:  # a URL urllib cannot send to (http.client.InvalidURL and the like)
                raise UserError(f"cannot send a request to {self.url}: {e}", params="base_url") from None
        raise JudgeUnreachable(f"the judge endpoint {self.url} did not answer after {self.retries + 1} attempts "
                               f"(last error: {last})")


def _answer_text(reply: object, url: str) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        raise UserError(f"the judge endpoint {url} did not answer in the chat-completions format "
                        f"(got {str(reply)[:120]})") from None
    return content if isinstance(content, str) else ""


def run_concurrently(items: Sequence, work: Callable, done: Callable, concurrency: int) -> None:
    """work(item) for every item on `concurrency` threads; done(item, result) in the caller's lock as each ends.

    The first error stops the rest (requests already sent finish and are kept) and is raised.
    """
    lock, failed = threading.Lock(), threading.Event()

    def one(item):
        if failed.is_set():  # an earlier request failed: send no new one
            return
        try:
            result = work(item)
        except BaseException:
            failed.set()
            raise
        with lock:
            done(item, result)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = [pool.submit(one, item) for item in items]
        finished, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()


# ---------------------------------------------------------------------------------------------------------
# Scoring one responses file
# ---------------------------------------------------------------------------------------------------------


@dataclass
class JudgeSpec:
    """What `evaluate judge` does; the scores go to `out` (default: RESPONSES.scores.jsonl)."""

    responses: str | None = setting(None, "responses file from `evaluate generate` (or --compare A B)")
    base_url: str | None = setting(None, "the endpoint's OpenAI-compatible base URL, e.g. "
                                   "http://localhost:11434/v1 (Ollama), http://127.0.0.1:8000/v1 (llmscratch serve)",
                                   required=True)
    model: str | None = setting(None, "the judge model's name at that endpoint", required=True)
    api_key_env: str | None = setting(None, "name of the environment variable holding the API key (sent as a "
                                      "Bearer token; the key itself never goes on the command line)")
    out: str | None = setting(None, "scores file (default: beside the responses)", flag="--out", aliases=("-o",))
    compare: list[str] | None = setting(None, "two responses files to the same entries: judge A against B "
                                        "pairwise (the order shown swapped for half the entries); A's win rate",
                                        nargs=2, metavar=("A", "B"))
    concurrency: int = setting(4, "requests in flight at once", ge=1)
    timeout: float = setting(60.0, "seconds to wait for one answer", gt=0)
    retries: int = setting(4, "retries of a request after a connection error, timeout, HTTP 429 or 5xx, with "
                           "exponential backoff", ge=0)
    retry_wait: float = setting(1.0, "seconds before the first retry, doubled each time (at most 30)", ge=0)
    seed: int = setting(123, "seed sent to the judge (with temperature 0)", ge=0)
    progress: bool = setting(True, "no progress bar", switches={"--no-progress": False})

    def __post_init__(self) -> None:
        check_fields(self)
        if self.base_url is not None:
            check_base_url(self.base_url)

    def client(self) -> ChatClient:
        key = None
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise UserError(f"the environment variable {self.api_key_env} (the judge's API key, api_key_env) is "
                                "not set", params="api_key_env")
        return ChatClient(self.base_url, self.model, key, self.timeout, self.retries, self.retry_wait, seed=self.seed)


def beside(path: str | Path, suffix: str) -> Path:
    """RESPONSES.jsonl -> RESPONSES<suffix> in the same folder."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + suffix)


def _previous(out: Path, records: Mapping[int, Mapping], judge: str, key: str = "score") -> dict[int, dict]:
    """Records already in `out` (by index), checked to belong to these responses and this judge."""
    if not out.is_file():
        return {}
    previous, _ = read_jsonl(out, "scores")
    kept = {}
    for rec in previous:
        i = rec.get("index")
        if rec.get("judge") != judge:
            raise UserError(f"{out} holds answers of the judge {rec.get('judge')!r}, not {judge!r}; write to "
                            "another file (-o) or delete it")
        if i not in records or records[i]["instruction"] != rec.get("instruction") or key not in rec:
            raise UserError(f"{out} holds an entry that is not in these responses (another data set?); write to "
                            "another file (-o) or delete it")
        kept[i] = rec
    return kept


def score_summary(scores: Sequence[int | None]) -> dict:
    """Mean of the integer scores, their count, and the count of answers that were not an integer."""
    valid = [s for s in scores if s is not None]
    return {"mean": sum(valid) / len(valid) if valid else None, "scored": len(valid),
            "not_integer": len(scores) - len(valid), "total": len(scores)}


def run_judge(spec: JudgeSpec) -> dict:
    """Score every response not yet in the scores file; returns the summary (also written as JSON) and the
    histogram's path. Scores already received are saved even when the endpoint fails part-way."""
    from tqdm.auto import tqdm

    client = spec.client()
    records = {r["index"]: r for r in read_responses(spec.responses)}
    out = Path(spec.out) if spec.out else beside(spec.responses, ".scores.jsonl")
    check_not_input([out, beside(out, ".summary.json"), beside(out, ".png")], [spec.responses])
    scored = _previous(out, records, spec.model)
    todo = [records[i] for i in sorted(records) if i not in scored]
    bar = tqdm(total=len(records), initial=len(scored), desc="judge", unit="response", disable=not spec.progress)

    def done(rec: Mapping, answer: str) -> None:
        row = {"index": rec["index"], "instruction": rec["instruction"], "score": parse_score(answer),
               "answer": answer, "judge": spec.model}
        append_jsonl(out, [row])
        scored[rec["index"]] = row
        bar.update(1)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_concurrently(todo, lambda rec: client.complete(judge_prompt(rec)), done, spec.concurrency)
    except UserError as e:
        raise UserError(f"{e}. {len(scored)} of {len(records)} scores are saved in {out}; run the same command "
                        "again to score the rest", params=e.params) from None
    finally:
        bar.close()
    scores = [scored[i]["score"] for i in sorted(scored)]
    summary = {**score_summary(scores), "judge": spec.model, "endpoint": client.url, "responses": spec.responses,
               "scores_file": str(out), "histogram": str(plot_scores(scores, beside(out, ".png"), spec))}
    atomic_write_text(beside(out, ".summary.json"), json.dumps(summary, indent=2) + "\n")
    return summary


def plot_scores(scores: Sequence[int | None], path: Path, spec: JudgeSpec) -> Path:
    """A histogram of the integer scores (bins of 10) with the mean marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    valid = [s for s in scores if s is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(valid, bins=range(0, 101, 10), color="#4c72b0", edgecolor="white")
    if valid:
        mean = sum(valid) / len(valid)
        ax.axvline(mean, color="#c44e52", linestyle="--", label=f"mean {mean:.2f}")
        ax.legend()
    ax.set_xlabel("judge score (0-100)")
    ax.set_ylabel("responses")
    ax.set_title(f"{Path(spec.responses).name}: judged by {spec.model} "
                 f"({len(valid)} scored, {len(scores) - len(valid)} not an integer)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------
# Pairwise comparison of two responses files
# ---------------------------------------------------------------------------------------------------------


def paired(a_path: str, b_path: str) -> list[tuple[dict, dict]]:
    """Records of two responses files to the same entries, paired by index; UserError when they disagree."""
    a = {r["index"]: r for r in read_responses(a_path)}
    b = {r["index"]: r for r in read_responses(b_path)}
    common = sorted(set(a) & set(b))
    if not common:
        raise UserError(f"{a_path} and {b_path} answer no common entry")
    for i in common:
        if a[i]["instruction"] != b[i]["instruction"] or a[i]["output"] != b[i]["output"]:
            raise UserError(f"{a_path} and {b_path} hold different entries at index {i} (another data set or "
                            "split?)")
    return [(a[i], b[i]) for i in common]


def swapped_indices(indices: Sequence[int], seed: int) -> set[int]:
    """Half of the indices (a seeded choice): for those, B's answer is shown first."""
    return set(random.Random(seed).sample(sorted(indices), len(indices) // 2))


def run_compare(spec: JudgeSpec, a_path: str, b_path: str) -> dict:
    """Judge A against B on every common entry; returns wins, ties (no valid answer) and A's win rate."""
    from tqdm.auto import tqdm

    client = spec.client()
    pairs = paired(a_path, b_path)
    out = Path(spec.out) if spec.out else beside(a_path, f".vs.{Path(b_path).name.removesuffix('.jsonl')}.jsonl")
    check_not_input([out], [a_path, b_path])
    done_rows = _previous(out, {a["index"]: a for a, _ in pairs}, spec.model, key="winner")
    swap = swapped_indices([a["index"] for a, _ in pairs], spec.seed)
    todo = [(a, b) for a, b in pairs if a["index"] not in done_rows]
    bar = tqdm(total=len(pairs), initial=len(done_rows), desc="compare", unit="pair", disable=not spec.progress)

    def ask(pair) -> str:
        a, b = pair
        first, second = (b, a) if a["index"] in swap else (a, b)
        return client.complete(compare_prompt(a, first["response"], second["response"]))

    def done(pair, answer: str) -> None:
        a, _ = pair
        choice = parse_choice(answer)
        order = ("B", "A") if a["index"] in swap else ("A", "B")
        row = {"index": a["index"], "instruction": a["instruction"], "shown_first": order[0], "answer": answer,
               "winner": None if choice is None else order[choice - 1], "judge": spec.model}
        append_jsonl(out, [row])
        done_rows[a["index"]] = row
        bar.update(1)

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_concurrently(todo, ask, done, spec.concurrency)
    except UserError as e:
        raise UserError(f"{e}. {len(done_rows)} of {len(pairs)} verdicts are saved in {out}; run the same command "
                        "again for the rest", params=e.params) from None
    finally:
        bar.close()
    winners = [r["winner"] for r in done_rows.values()]
    wins_a, wins_b = winners.count("A"), winners.count("B")
    return {"a": a_path, "b": b_path, "pairs": len(pairs), "wins_a": wins_a, "wins_b": wins_b,
            "not_1_or_2": winners.count(None), "win_rate_a": wins_a / (wins_a + wins_b) if wins_a + wins_b else None,
            "first_shown_won": sum(r["winner"] == r["shown_first"] for r in done_rows.values()),
            "judge": spec.model, "file": str(out)}
