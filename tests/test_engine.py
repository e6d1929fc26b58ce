"""The serving engine: continuous batching from several threads, cancel, backpressure, seeds, shutdown."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import varied_tiny_model

from llmscratch.generate import SamplingConfig, generate
from llmscratch.serve.engine import Engine, EngineStopped, QueueFull, SerialEngine
from llmscratch.utils import UserError


class Collector:
    """on_token / on_done callbacks that record what the engine sends."""

    def __init__(self):
        self.tokens: list[int] = []
        self.reasons: list[str] = []

    def on_token(self, t: int) -> None:
        self.tokens.append(t)

    def on_done(self, reason: str) -> None:
        self.reasons.append(reason)


def ignore(*args) -> None:
    pass


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (int(k),), generator=g).tolist() for k in torch.randint(1, 20, (n,), generator=g)]


@pytest.mark.parametrize("engine_class,family", [(Engine, "gpt2"), (Engine, "llama"), (SerialEngine, "gpt2")])
def test_threads_submitting_at_different_times_get_their_solo_answers(engine_class, family):
    model = varied_tiny_model(family, 1)
    ps = prompts(10, 2)
    cfgs = [SamplingConfig(max_new_tokens=n) for n in (5, 30, 12, 1, 22, 9, 40, 17, 3, 26)]
    engine = engine_class(model, max_batch=4, max_queue=16, max_len=64)
    engine.start()
    results = [Collector() for _ in ps]
    handles = [None] * len(ps)
    peak = [0]

    def client(i):
        time.sleep(0.003 * i)  # arrive while others generate
        handles[i] = engine.submit(ps[i], cfgs[i], results[i].on_token, results[i].on_done)
        peak[0] = max(peak[0], engine.stats().active)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for h in handles:
        assert h.wait(30) == "length"
    engine.stop()
    alone = [generate(model, [p], c)[0] for p, c in zip(ps, cfgs)]
    assert [r.tokens for r in results] == alone
    assert all(r.reasons == ["length"] for r in results)
    stats = engine.stats()
    assert stats.completed == 10 and stats.generated_tokens == sum(len(a) for a in alone) and not stats.running
    assert stats.active == 0 and stats.queued == 0
    assert peak[0] <= (1 if engine_class is SerialEngine else 4)


def test_stop_ids_are_not_sent_and_finish_with_stop():
    model = varied_tiny_model("gpt2", 3)
    p = prompts(1, 4)[0]
    alone = generate(model, [p], SamplingConfig(max_new_tokens=20))[0]
    stop = alone[6]
    engine = Engine(model, max_batch=2, max_len=64)
    engine.start()
    c = Collector()
    cfg = SamplingConfig(max_new_tokens=20, stop_ids=[stop])
    h = engine.submit(p, cfg, c.on_token, c.on_done)
    assert h.wait(30) == "stop"
    engine.stop()
    assert c.tokens == alone[: alone.index(stop)] and c.reasons == ["stop"]
    assert h.tokens == c.tokens and h.finish_reason == "stop" and h.done


def test_cancel_frees_the_row_for_the_next_request():
    model = varied_tiny_model("gpt2", 5)
    a, b = prompts(2, 6)
    engine = Engine(model, max_batch=1, max_len=64)
    first, second = Collector(), Collector()
    seen, cancelled = threading.Event(), threading.Event()

    def on_token(t):  # holds the engine thread at the first token until the request is cancelled
        first.on_token(t)
        seen.set()
        cancelled.wait(30)

    engine.start()
    h = engine.submit(a, SamplingConfig(max_new_tokens=40), on_token, first.on_done)
    h2 = engine.submit(b, SamplingConfig(max_new_tokens=10), second.on_token, second.on_done)
    assert seen.wait(30)
    h.cancel()
    cancelled.set()
    assert h2.wait(30) == "length"  # got the only row
    engine.stop()
    assert first.reasons == ["cancelled"] and len(first.tokens) == 1
    assert second.tokens == generate(model, [b], SamplingConfig(max_new_tokens=10))[0]


def test_a_failing_consumer_cancels_only_its_request():
    model = varied_tiny_model("gpt2", 7)
    a, b = prompts(2, 8)
    engine = Engine(model, max_batch=2, max_len=64)

    def broken(t):
        raise ConnectionResetError("client went away")

    gone, ok = Collector(), Collector()
    engine.start()
    h = engine.submit(a, SamplingConfig(max_new_tokens=30), broken, gone.on_done)
    h2 = engine.submit(b, SamplingConfig(max_new_tokens=30), ok.on_token, ok.on_done)
    assert h.wait(30) == "cancelled" and h2.wait(30) == "length"
    engine.stop()
    assert ok.tokens == generate(model, [b], SamplingConfig(max_new_tokens=30))[0]


def test_queue_full_past_max_queue_and_prompts_that_do_not_fit():
    engine = Engine(varied_tiny_model("gpt2"), max_batch=1, max_queue=2, max_len=32)  # not started: nothing leaves
    cfg = SamplingConfig(max_new_tokens=4)
    for p in ([1, 2], [3], [5, 6, 7]):  # one for the free row, two waiting
        engine.submit(p, cfg, ignore, ignore)
    with pytest.raises(QueueFull) as e:
        engine.submit([4], cfg, ignore, ignore)
    assert e.value.retry_after >= 1 and isinstance(e.value, Exception)
    assert engine.stats().queued == 3
    with pytest.raises(UserError, match=r"prompt \(30 tokens\) plus max_new_tokens \(4\).* 32 tokens"):
        engine.submit([1] * 30, cfg, ignore, ignore)
    with pytest.raises(UserError, match="temperature"):
        engine.submit([1], SamplingConfig(temperature=-1), ignore, ignore)


def test_requests_being_prefilled_count_against_the_queue():
    """A request the engine thread has taken off the queue but not yet prefilled still holds its place: with one
    row and one queue place, a third request is refused while the first is being prefilled."""
    engine = Engine(varied_tiny_model("gpt2"), max_batch=1, max_queue=1, max_len=32)  # not started: we step it
    cfg = SamplingConfig(max_new_tokens=4)
    engine.submit([1, 2], cfg, ignore, ignore)
    engine.submit([3], cfg, ignore, ignore)
    taken = engine._next_work()  # what the engine thread does first: the first request, about to be prefilled
    assert len(taken) == 1 and engine.stats().queued == 1
    with pytest.raises(QueueFull):
        engine.submit([4], cfg, ignore, ignore)
    engine._join(taken)  # prefilled: now it holds a row instead
    assert engine.stats().active == 1
    with pytest.raises(QueueFull):
        engine.submit([4], cfg, ignore, ignore)


def test_seeded_requests_are_reproducible_in_a_batch():
    model = varied_tiny_model("llama", 9)
    p = prompts(1, 10)[0]
    cfg = SamplingConfig(max_new_tokens=15, temperature=1.0, seed=42)
    engine = Engine(model, max_batch=4, max_len=64)
    engine.start()
    runs = [Collector() for _ in range(3)]
    handles = [engine.submit(p, cfg, c.on_token, c.on_done) for c in runs]
    other = SamplingConfig(max_new_tokens=15, temperature=1.0, seed=43)
    different = Collector()
    handles.append(engine.submit(p, other, different.on_token, different.on_done))
    assert all(h.wait(30) == "length" for h in handles)
    engine.stop()
    alone = generate(model, [p], cfg)[0]
    assert all(c.tokens == alone for c in runs) and different.tokens != alone


def test_stop_drains_or_cancels_and_then_refuses_new_requests():
    model = varied_tiny_model("gpt2", 11)
    a, b = prompts(2, 12)
    engine = Engine(model, max_batch=1, max_len=64)
    done = [Collector(), Collector()]
    engine.start()
    for p, c in zip((a, b), done):
        engine.submit(p, SamplingConfig(max_new_tokens=20), c.on_token, c.on_done)
    engine.stop(drain=True)
    assert [c.reasons for c in done] == [["length"], ["length"]]
    with pytest.raises(EngineStopped):
        engine.submit(a, SamplingConfig(max_new_tokens=4), ignore, ignore)

    engine = Engine(model, max_batch=1, max_len=64)
    dropped = [Collector(), Collector()]
    for p, c in zip((a, b), dropped):
        engine.submit(p, SamplingConfig(max_new_tokens=20), c.on_token, c.on_done)
    engine.start()
    engine.stop(drain=False)
    assert [c.reasons for c in dropped] == [["cancelled"], ["cancelled"]]


@pytest.mark.parametrize("engine_class,steps", [(Engine, 9), (SerialEngine, 4 * 9)])
def test_waiting_requests_share_decode_steps_unless_batching_is_off(engine_class, steps):
    model = varied_tiny_model("gpt2", 13)
    engine = engine_class(model, max_batch=4, max_len=64)
    handles = [engine.submit(p, SamplingConfig(max_new_tokens=10), ignore, ignore) for p in prompts(4, 14)]
    engine.start()
    assert all(h.wait(30) == "length" for h in handles)
    engine.stop()
    assert engine.stats().steps == steps  # the first token of each comes from its prefill
