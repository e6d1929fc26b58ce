"""Direct Preference Optimization (DPO, Rafailov et al. 2023), written out: per-sequence log-probabilities of the
response tokens, the loss, the implicit rewards and their metrics.

For a prompt x with a chosen answer y_c and a rejected answer y_r, the policy pi (the model being trained) and a
frozen reference pi_ref (the starting model):

    loss = -log sigmoid(beta * ((log pi(y_c|x) - log pi(y_r|x)) - (log pi_ref(y_c|x) - log pi_ref(y_r|x))))

`log pi(y|x)` adds (reduction "sum", the paper) or averages (reduction "mean", the book) the log-probabilities of
the answer tokens only: the prompt and the padding are masked out. The implicit reward of an answer is
`beta * (log pi(y|x) - log pi_ref(y|x))`; the margin is chosen reward - rejected reward; the reward accuracy is
the share of pairs whose chosen reward is higher. At the first step the policy equals the reference: every
reward is 0 and the loss is log 2.

DPO only asks that the rejected answers fall faster than the chosen ones, and both often fall: the chosen answers
too become unlikely and greedy answers degrade. `sft_weight` w adds w times the chosen answers' negative
log-likelihood (per token) to each pair's loss (RPO, Pang et al. 2024), which keeps them likely; `chosen_nll` is
reported either way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llmscratch.train.tasks import BaseTask
from llmscratch.utils import UserError, atomic_path

REDUCTIONS = ("mean", "sum")


def sequence_logprobs(
    logits: torch.Tensor, ids: torch.Tensor, answer_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the answer tokens' log-probabilities (B,) in float32, number of answer tokens (B,)).

    logits (B, T, vocab) are the model's outputs on ids (B, T): position t predicts token t + 1. answer_mask (B, T)
    bool is True at the answer tokens of ids (neither prompt nor padding); the first token of a row is never
    predicted, so its mask value is ignored. Only the answer positions go through the softmax.
    """
    predicted = answer_mask[:, 1:]  # (B, T-1): which predicted tokens count
    return answer_logprobs(logits[:, :-1][predicted], ids[:, 1:][predicted], predicted, ids.shape[0])


def answer_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, where: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row sums of log p(target) (B,) float32, counts (B,)) from the logits of the counted positions only.

    logits (N, vocab) and targets (N,) of the N positions where `where` (B, T') is True, in row-major order.
    """
    rows = where.nonzero()[:, 0]  # (N,) the row of each counted token
    logits = logits.float()
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (N,)
    sums = torch.zeros(batch, dtype=torch.float32, device=targets.device).index_add(0, rows, logp)
    return sums, where.sum(-1).to(torch.float32)


def pair_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen sums, chosen counts, rejected sums, rejected counts), each (B,), of one preference batch.

    The chosen and rejected rows (right-padded to one length) go through `model` as one batch of 2B rows.
    """
    ids = torch.cat([batch["chosen"], batch["rejected"]])  # (2B, T)
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])  # (2B, T)
    predicts = torch.zeros_like(mask)
    predicts[:, :-1] = mask[:, 1:]  # position t predicts token t + 1: the head runs where that is an answer token
    sums, counts = answer_logprobs(model(ids, select=predicts), ids[:, 1:][mask[:, 1:]], predicts, ids.shape[0])
    B = batch["chosen"].shape[0]
    return sums[:B], counts[:B], sums[B:], counts[B:]


def reduce_logprobs(logp_sum: torch.Tensor, n_tokens: torch.Tensor, reduction: str) -> torch.Tensor:
    """The per-sequence log-probability: the sum over answer tokens ("sum") or their mean ("mean")."""
    if reduction == "sum":
        return logp_sum
    if reduction == "mean":
        return logp_sum / n_tokens.clamp(min=1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


@dataclass
class DPOOutput:
    """Per-pair results of the DPO loss: each field has shape (B,)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    chosen_nll: torch.Tensor | None = None  # the policy's negative log-likelihood per chosen answer token

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    def metrics(self) -> dict[str, tuple[float, int]]:
        """Sums and counts (the training loop's form): chosen/rejected reward, margin, reward accuracy."""
        n = int(self.loss.shape[0])
        return {
            "chosen_reward": (float(self.chosen_rewards.sum()), n),
            "rejected_reward": (float(self.rejected_rewards.sum()), n),
            "margin": (float(self.margins.sum()), n),
            "accuracy": (float((self.margins > 0).sum()), n),
            **({"chosen_nll": (float(self.chosen_nll.detach().sum()), n)} if self.chosen_nll is not None else {}),
        }


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> DPOOutput:
    """The DPO loss of each pair from per-sequence log-probabilities (each (B,)) of policy and reference."""
    policy_logratio = policy_chosen - policy_rejected
    ref_logratio = ref_chosen - ref_rejected
    loss = -F.logsigmoid(beta * (policy_logratio - ref_logratio))
    chosen_rewards = beta * (policy_chosen - ref_chosen).detach()
    rejected_rewards = beta * (policy_rejected - ref_rejected).detach()
    return DPOOutput(loss, chosen_rewards, rejected_rewards)


# ---------------------------------------------------------------------------------------------------------
# The reference model
# ---------------------------------------------------------------------------------------------------------

# reference(policy, batch) -> (chosen sums, rejected sums), each (B,): the frozen starting model's answer
# log-probabilities (summed over answer tokens; the counts are the policy's, as the masks are the same).
Reference = Callable[[nn.Module, dict], tuple[torch.Tensor, torch.Tensor]]


class FrozenReference:
    """A second model in memory, frozen (eval mode, no gradients): one extra forward pass per batch."""

    def __init__(self, model: nn.Module):
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, policy: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        device = batch["chosen"].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        chosen, _, rejected, _ = pair_logprobs(self.model, batch)
        return chosen, rejected


class PolicyReference:
    """The policy itself as the reference: in eval mode, without gradients, its LoRA adapters (if any) switched off.

    With LoRA that is the frozen base model at every step (no second model). Without LoRA it is the reference
    only before the first update: the way to compute the reference tables once (`precompute_reference`).
    """

    @torch.no_grad()
    def __call__(self, policy: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        from llmscratch.model.lora import adapters_off, lora_layers
        from llmscratch.train.distributed import unwrap

        base = unwrap(policy)
        was_training = base.training
        base.eval()
        try:
            with adapters_off(base) if lora_layers(base) else contextlib.nullcontext():
                chosen, _, rejected, _ = pair_logprobs(base, batch)
        finally:
            base.train(was_training)
        return chosen, rejected


def check_same_vocabulary(policy: nn.Module, reference: nn.Module) -> None:
    """UserError unless the reference model scores the policy's tokens: the same vocabulary size."""
    p, r = policy.config.vocab_size, reference.config.vocab_size
    if p != r:
        raise UserError(f"the reference model's vocabulary has {r:,} tokens and the policy's {p:,}: DPO compares "
                        "the two models' probabilities of the same tokens, so both need the same tokenizer")


# ---------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------


class DPOTask(BaseTask):
    """Preference pairs in, the DPO loss out; metrics: chosen/rejected rewards, margin, reward accuracy.

    `splits` holds "train" and "val" (and "test" when given) PreferenceDatasets. The reference log-probabilities
    come from `reference` (a frozen copy, or the policy with adapters off) at every batch, or from tables
    computed once (`precompute_reference`), which the batches then carry as "ref_chosen" and "ref_rejected".
    The training order of epoch e is a pure function of (seed, e); incomplete global batches are dropped.
    """

    name = "dpo"
    produces_text = False  # a DPO loss has no perplexity; answers are compared after training

    def __init__(self, splits: dict, pad_id: int, beta: float = 0.1, reduction: str = "mean",
                 reference: Reference | None = None, seed: int = 123, sft_weight: float = 0.0):
        if beta <= 0:
            raise UserError(f"beta must be > 0, got {beta}")
        if sft_weight < 0:
            raise UserError(f"sft_weight must be >= 0, got {sft_weight}")
        if reduction not in REDUCTIONS:
            raise UserError(f"reduction (of answer-token log-probs) must be mean or sum, got {reduction!r}")
        for split in ("train", "val"):
            if split not in splits:
                raise ValueError(f"splits needs {split!r}")
        self.splits, self.pad_id, self.beta, self.reduction = splits, int(pad_id), beta, reduction
        self.reference, self.seed, self.sft_weight = reference, seed, sft_weight
        self.tables: dict[str, torch.Tensor] = {}  # split -> (N, 2): reference chosen, rejected log-prob sums

    # --- batches
    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        return len(self.splits["train"]) // (batch_size * world_size)

    def train_batches(self, epoch: int, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1):
        from llmscratch.data.pretrain import EpochSampler

        sampler = EpochSampler(len(self.splits["train"]), shuffle=True, seed=self.seed, rank=rank,
                               world_size=world_size, drop_last=True)
        order = sampler.order(epoch)
        for b in range(start, self.num_train_batches(batch_size, world_size)):
            yield self.batch("train", order[b * batch_size : (b + 1) * batch_size])

    def val_batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        yield from self.split_batches("val", batch_size, rank, world_size)

    def split_batches(self, split: str, batch_size: int, rank: int = 0, world_size: int = 1):
        """Every pair of `split` once over all ranks, in file order (evaluation)."""
        mine = list(range(rank, len(self.splits[split]), world_size))
        for i in range(0, len(mine), batch_size):
            yield self.batch(split, mine[i : i + batch_size])

    def batch(self, split: str, indices: list[int]) -> dict:
        """Pairs `indices` of `split`, collated, with their precomputed reference log-probs when there are any."""
        from llmscratch.data.preference import collate_preference

        dataset = self.splits[split]
        batch = collate_preference([dataset[i] for i in indices], self.pad_id, indices)
        table = self.tables.get(split)
        if table is not None:
            batch["ref_chosen"], batch["ref_rejected"] = table[batch["index"]].unbind(-1)  # 2 x (B,)
        return batch

    # --- loss and metrics
    def outputs(self, model, batch: dict) -> DPOOutput:
        """Per-pair loss and rewards of one batch (the policy's forward pass, and the reference's if live)."""
        chosen, n_chosen, rejected, n_rejected = pair_logprobs(model, batch)
        if "ref_chosen" in batch:
            ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
        elif self.reference is not None:
            ref_chosen, ref_rejected = self.reference(model, batch)
        else:
            raise ValueError("DPOTask has neither a reference model nor precomputed reference log-probs")
        r = self.reduction
        out = dpo_loss(reduce_logprobs(chosen, n_chosen, r), reduce_logprobs(rejected, n_rejected, r),
                       reduce_logprobs(ref_chosen, n_chosen, r), reduce_logprobs(ref_rejected, n_rejected, r),
                       self.beta)
        out.chosen_nll = -reduce_logprobs(chosen, n_chosen, "mean")  # (B,)
        if self.sft_weight:
            out.loss = out.loss + self.sft_weight * out.chosen_nll
        return out

    def loss(self, model, batch: dict) -> torch.Tensor:
        return self.outputs(model, batch).loss.mean()

    def evaluate_batch(self, model, batch: dict) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
        out = self.outputs(model, batch)
        return out.loss.mean(), out.metrics()

    def metrics(self, model, batch: dict) -> dict[str, tuple[float, int]]:
        return self.evaluate_batch(model, batch)[1]

    def batch_tokens(self, batch: dict) -> int:
        """Prompt and answer tokens of both sequences (padding not counted)."""
        total = 0
        for key in ("chosen_mask", "rejected_mask"):
            mask = batch[key]
            last = mask.shape[1] - mask.flip(1).int().argmax(1)  # (B,) one past each row's last answer token
            total += int(last.sum())
        return total

    # --- reference log-probs computed once
    @torch.no_grad()
    def reference_table(self, model, split: str, batch_size: int, device, autocast=contextlib.nullcontext,
                        desc: str | None = None, reference: Reference | None = None) -> torch.Tensor:
        """(N, 2) reference log-prob sums (chosen, rejected) of every pair of `split`, from `reference` (default:
        the task's live reference)."""
        from tqdm.auto import tqdm

        from llmscratch.train.tasks import move_to

        reference = reference or self.reference
        if reference is None:
            raise ValueError("reference_table needs a live reference")
        table = torch.zeros(len(self.splits[split]), 2)
        bar = tqdm(total=len(table), desc=desc, unit="pair", disable=desc is None, leave=False)
        for batch in self.split_batches(split, batch_size):
            batch = move_to(batch, device)
            with autocast():
                chosen, rejected = reference(model, batch)
            table[batch["index"].cpu()] = torch.stack([chosen, rejected], -1).float().cpu()
            bar.update(len(chosen))
        bar.close()
        return table

    def data_fingerprint(self) -> str:
        """sha256 of every split's token ids: reference tables computed on other data are not reused."""
        h = hashlib.sha256()
        for split in sorted(self.splits):
            for p in self.splits[split].pairs:
                h.update(json.dumps([split, p.prompt, p.chosen, p.rejected]).encode())
        return h.hexdigest()

    def precompute_reference(self, model, batch_size: int, device, path: str | Path | None = None,
                             key: str = "", autocast=contextlib.nullcontext, progress: bool = True,
                             reference: Reference | None = None) -> str:
        """Compute the reference tables of every split once with `reference` (default: the task's; e.g.
        `PolicyReference()` before training), or read them from `path` when it holds the tables of this data and
        `key`; keep them, save them to `path` (safetensors, so a resumed run reads them), drop the live reference.

        `key` names what else decides the values (the reference model, dtype). Returns "computed" or "loaded".
        """
        from safetensors.torch import load_file, save_file

        meta = {"format": "llmscratch-dpo-reference", "data": self.data_fingerprint(), "key": key}
        if path is not None and Path(path).is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                stored = f.metadata() or {}
            if stored == meta:
                self.tables = load_file(str(path))
                self.reference = None
                return "loaded"
        self.tables = {}
        for split in self.splits:
            self.tables[split] = self.reference_table(model, split, batch_size, device, autocast,
                                                      f"reference log-probs ({split})" if progress else None,
                                                      reference)
        if path is not None:
            with atomic_path(path) as tmp:
                save_file(self.tables, str(tmp), metadata=meta)
        self.reference = None
        return "computed"
