"""DPO: the loss against a hand computation, log 2 at the start, the LoRA reference (adapters off)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from llmscratch.model import build_model, get_config
from llmscratch.model.lora import adapters_off, apply_lora, lora_layers, merge_lora
from llmscratch.train.tasks.dpo import dpo_loss, pair_logprobs, reduce_logprobs, sequence_logprobs
from llmscratch.utils import UserError


def tiny(seed: int = 0, preset: str = "gpt2-tiny"):
    torch.manual_seed(seed)
    return build_model(get_config(preset)).eval()


def toy_batch(B: int = 3, T: int = 12, seed: int = 1) -> dict:
    """Random preference rows: prompt of 3-5 tokens, answers of 2-6 tokens, right padding."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in ("chosen", "rejected"):
        ids = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.bool)
        for b in range(B):
            p = int(torch.randint(3, 6, (1,), generator=g))
            a = int(torch.randint(2, 7, (1,), generator=g))
            ids[b, : p + a] = torch.randint(1, 512, (p + a,), generator=g)
            mask[b, p : p + a] = True
        out[key], out[key + "_mask"] = ids, mask
    return out


def test_sequence_logprobs_by_hand():
    # vocabulary of 3, one row: tokens [0, 2, 1, 0(pad)], prompt = token 0, answer = tokens 2 and 1
    logits = torch.tensor([[[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [9.0, 9.0, 9.0], [5.0, 0.0, 0.0]]])
    ids = torch.tensor([[0, 2, 1, 0]])
    mask = torch.tensor([[False, True, True, False]])
    sums, counts = sequence_logprobs(logits, ids, mask)
    lp1 = 3.0 - math.log(math.exp(1) + math.exp(2) + math.exp(3))  # p(2 | 0) from the first position
    lp2 = 0.0 - math.log(math.exp(0.5) + math.exp(0.0) + math.exp(-1.0))  # p(1 | 0 2)
    assert sums.item() == pytest.approx(lp1 + lp2, abs=1e-6)
    assert counts.tolist() == [2.0]
    assert reduce_logprobs(sums, counts, "mean").item() == pytest.approx((lp1 + lp2) / 2, abs=1e-6)
    assert reduce_logprobs(sums, counts, "sum").item() == pytest.approx(lp1 + lp2, abs=1e-6)
    with pytest.raises(ValueError, match="reduction"):
        reduce_logprobs(sums, counts, "max")


def test_dpo_loss_by_hand():
    beta = 0.1
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-1.5, -2.0])
    out = dpo_loss(pc, pr, rc, rr, beta)
    # row 0: z = 0.1 * ((-1 + 2) - 0) = 0.1; row 1: z = 0.1 * ((-3 + 1) - 0) = -0.2
    expect = [math.log(1 + math.exp(-0.1)), math.log(1 + math.exp(0.2))]
    assert out.loss.tolist() == pytest.approx(expect, abs=1e-6)
    assert out.chosen_rewards.tolist() == pytest.approx([0.05, -0.1], abs=1e-6)
    assert out.rejected_rewards.tolist() == pytest.approx([-0.05, 0.1], abs=1e-6)
    assert out.margins.tolist() == pytest.approx([0.1, -0.2], abs=1e-6)
    m = out.metrics()
    assert m["accuracy"] == (1.0, 2)
    assert m["margin"][0] == pytest.approx(-0.1, abs=1e-6)


def test_padding_and_prompt_do_not_count():
    model = tiny()
    batch = toy_batch()
    with torch.no_grad():
        sums, counts, _, _ = pair_logprobs(model, batch)
        for b in range(3):  # each row alone, without its padding: the same log-probability and count
            row = batch["chosen"][b : b + 1]
            m = batch["chosen_mask"][b : b + 1]
            n = int(m.nonzero()[-1, 1]) + 1
            alone, k = sequence_logprobs(model(row[:, :n]), row[:, :n], m[:, :n])
            assert torch.allclose(alone, sums[b : b + 1], atol=1e-5)
            assert k.item() == counts[b].item() == m.sum().item()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_loss_is_log2_when_policy_is_reference(reduction):
    policy = tiny()
    reference = copy.deepcopy(policy)
    batch = toy_batch()
    with torch.no_grad():
        pc, nc, pr, nr = pair_logprobs(policy, batch)
        rc, mc, rr, mr = pair_logprobs(reference, batch)
    out = dpo_loss(reduce_logprobs(pc, nc, reduction), reduce_logprobs(pr, nr, reduction),
                   reduce_logprobs(rc, mc, reduction), reduce_logprobs(rr, mr, reduction), beta=0.1)
    assert torch.allclose(out.loss, torch.full((3,), math.log(2)))
    assert out.margins.abs().max() == 0


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_lora_adapters_off_is_the_base_model(preset):
    base = tiny(preset=preset)
    model = copy.deepcopy(base)
    apply_lora(model, rank=4, alpha=8)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)
    x = torch.randint(0, 512, (2, 10), generator=g)
    with torch.no_grad():
        adapted = model(x)
        with adapters_off(model):
            off = model(x)
        again = model(x)
    assert torch.equal(off, base(x))
    assert not torch.allclose(adapted, off)
    assert torch.equal(again, adapted)  # switched back on after the block
    merge_lora(model)
    with pytest.raises(UserError, match="unmerge"):
        with adapters_off(model):
            pass
    with pytest.raises(UserError, match="no LoRA"):
        with adapters_off(base):
            pass


# --- the task: live and precomputed reference, training


def pairs_dataset(n: int = 12, seed: int = 0):
    """Pairs of short byte strings: chosen answers are polite ("please ..."), rejected ones rude."""
    import random

    from conftest import ByteTokenizer

    from llmscratch.data.preference import PreferenceDataset

    tok, r = ByteTokenizer(), random.Random(seed)
    words = ["cat", "dog", "sun", "map", "box", "tea"]
    entries = []
    for i in range(n):
        w = r.choice(words)
        entries.append({"instruction": f"give {w} {i}", "input": "", "chosen": f"please, a {w}",
                        "rejected": f"no {w}!!", "where": f"entry {i}"})

    def encode(e):
        return tok.encode(f"Q: {e['instruction']}\nA: "), tok.encode(e["output"])

    return PreferenceDataset(entries, encode, max_length=48, end_id=tok.eos_id)


def dpo_task(reference, reduction="mean", n=12):
    from llmscratch.train.tasks.dpo import DPOTask

    ds = pairs_dataset(n)
    return DPOTask({"train": ds, "val": ds}, pad_id=0, beta=0.5, reduction=reduction, reference=reference)


def perturbed(model, seed=5, scale=0.05):
    policy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return policy


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_precomputed_reference_gives_the_live_loss(tmp_path, reduction):
    from llmscratch.train.tasks.dpo import FrozenReference, PolicyReference

    base = tiny()
    policy = perturbed(base)
    live = dpo_task(FrozenReference(copy.deepcopy(base)), reduction)
    stored = dpo_task(FrozenReference(copy.deepcopy(base)), reduction)
    path = tmp_path / "reference_logprobs.safetensors"
    assert stored.precompute_reference(policy, 5, torch.device("cpu"), path, key="k", progress=False) == "computed"
    assert stored.reference is None  # no second model kept
    with torch.no_grad():
        for indices in ([0, 1, 2, 3], [7, 4, 11]):
            a, b = live.batch("train", indices), stored.batch("train", indices)
            assert "ref_chosen" in b and "ref_chosen" not in a
            la, ma = live.evaluate_batch(policy, a)
            lb, mb = stored.evaluate_batch(policy, b)
            assert la.item() == pytest.approx(lb.item(), abs=1e-6)
            assert la.item() != pytest.approx(math.log(2), abs=1e-4)  # the policy differs from the reference
            for k in ma:
                assert ma[k][0] == pytest.approx(mb[k][0], abs=1e-5) and ma[k][1] == mb[k][1]
    # read back (a resumed run): the same tables; other data or key: computed again
    again = dpo_task(FrozenReference(copy.deepcopy(base)), reduction)
    assert again.precompute_reference(policy, 5, torch.device("cpu"), path, key="k", progress=False) == "loaded"
    assert torch.equal(again.tables["train"], stored.tables["train"])
    other = dpo_task(FrozenReference(copy.deepcopy(base)), reduction)
    assert other.precompute_reference(policy, 5, torch.device("cpu"), path, key="other", progress=False) == "computed"
    # the policy before its first update is its own reference: tables without a second model
    selfref = dpo_task(None, reduction)
    selfref.precompute_reference(copy.deepcopy(base).train(), 5, torch.device("cpu"), progress=False,
                                 reference=PolicyReference())
    assert torch.allclose(selfref.tables["train"], stored.tables["train"], atol=1e-5)


def test_adapters_off_reference_equals_a_frozen_copy():
    from llmscratch.train.tasks.dpo import FrozenReference, PolicyReference

    base = tiny()
    policy = copy.deepcopy(base)
    apply_lora(policy, rank=4, alpha=8)
    with torch.no_grad():
        for m in lora_layers(policy).values():
            m.lora_B.normal_(0, 0.1)
    policy.train()
    a, b = dpo_task(PolicyReference()), dpo_task(FrozenReference(copy.deepcopy(base)))
    batch = a.batch("train", [0, 1, 2])
    with torch.no_grad():
        assert torch.allclose(a.loss(policy, batch), b.loss(policy, batch), atol=1e-6)
    assert policy.training  # the reference pass leaves the policy's mode alone
    assert all(m.enabled for m in lora_layers(policy).values())


def test_vocabulary_mismatch_is_refused():
    from llmscratch.train.tasks.dpo import check_same_vocabulary

    other = build_model(get_config("gpt2-tiny", vocab_size=300))
    with pytest.raises(UserError, match="vocabulary has 300 tokens and the policy's 512"):
        check_same_vocabulary(tiny(), other)
    check_same_vocabulary(tiny(), tiny(seed=1))


def test_margin_grows_over_a_few_steps(tmp_path):
    from llmscratch.train.config import TrainConfig
    from llmscratch.train.tasks.dpo import FrozenReference
    from llmscratch.train.trainer import train

    base = tiny()
    policy = copy.deepcopy(base).train()
    task = dpo_task(FrozenReference(copy.deepcopy(base)), n=16)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=6, batch_size=4, lr=3e-3, schedule="constant",
                      eval_every=0, device="cpu", progress=False, export_models=False, sample_prompt=None)
    before = [task.evaluate_batch(policy, b)[1] for b in task.val_batches(16)][0]
    result = train(policy, task, cfg)
    after = [task.evaluate_batch(policy.eval(), b)[1] for b in task.val_batches(16)][0]
    assert before["margin"][0] == 0 and before["accuracy"][0] == 0  # policy == reference: no margin yet
    assert after["margin"][0] / 16 > 0.5
    assert after["accuracy"] == (16.0, 16)
    last = result.evals[-1]
    assert last["val_loss"] < math.log(2) and last["margin"] > 0.5 and last["accuracy"] == 1.0


def test_sft_weight_adds_the_chosen_answers_negative_log_likelihood():
    from llmscratch.train.tasks.dpo import FrozenReference, pair_logprobs

    base = tiny()
    policy = perturbed(base)
    plain = dpo_task(FrozenReference(copy.deepcopy(base)))
    rpo = dpo_task(FrozenReference(copy.deepcopy(base)))
    rpo.sft_weight = 0.7
    batch = plain.batch("train", [0, 1, 2])
    with torch.no_grad():
        chosen, n_chosen, _, _ = pair_logprobs(policy, batch)
        nll = -(chosen / n_chosen)  # (B,) per answer token
        a, b = plain.outputs(policy, batch), rpo.outputs(policy, batch)
    torch.testing.assert_close(a.chosen_nll, nll)
    torch.testing.assert_close(b.loss, a.loss + 0.7 * nll)
    assert plain.metrics(policy, batch)["chosen_nll"][0] == pytest.approx(float(nll.sum()), rel=1e-5)
    with pytest.raises(UserError, match="sft_weight"):
        dpo_task(None).__class__({"train": [], "val": []}, 0, sft_weight=-1)
