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
