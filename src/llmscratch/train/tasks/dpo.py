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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

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
    rows = predicted.nonzero()[:, 0]  # (N,) the row of each counted token
    chosen_logits = logits[:, :-1][predicted].float()  # (N, vocab)
    targets = ids[:, 1:][predicted]  # (N,)
    logp = chosen_logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(chosen_logits, dim=-1)  # (N,)
    sums = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add(0, rows, logp)
    return sums, predicted.sum(-1).to(torch.float32)


def pair_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen sums, chosen counts, rejected sums, rejected counts), each (B,), of one preference batch.

    The chosen and rejected rows (right-padded to one length) go through `model` as one batch of 2B rows.
    """
    ids = torch.cat([batch["chosen"], batch["rejected"]])  # (2B, T)
    mask = torch.cat([batch["chosen_mask"], batch["rejected_mask"]])  # (2B, T)
    sums, counts = sequence_logprobs(model(ids), ids, mask)
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
