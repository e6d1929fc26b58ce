"""Instruction fine-tuning as a training task: next-token cross-entropy on prompt + response, -100 targets ignored.

Batches come from `llmscratch.data.instruction.collate_instruction` (the end token appended, right padding,
targets shifted by one, padding and optionally the prompt masked with -100). Right padding needs no attention
mask: attention is causal, so no real token sees the padding after it.

At each evaluation the task can answer a few fixed validation instructions (`respond`): the recipe prints them
and logs them with the evaluation record, so one sees the answers change while the loss falls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from llmscratch.data.instruction import IGNORE_INDEX, InstructionBatch, InstructionDataset, epoch_order, format_prompt
from llmscratch.tokenizer import encode_prompt
from llmscratch.train.distributed import unwrap
from llmscratch.train.tasks import BaseTask


def instruction_loss(model, inputs: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of `model` on inputs (B, T) over the targets (B, T) that are not -100 (mean or sum).

    The vocabulary head runs only at the counted positions (`select`): masked prompts and padding cost no logits.
    """
    counted = targets != IGNORE_INDEX  # (B, T)
    logits = model(inputs, select=counted).float()  # (N, vocab)
    return F.cross_entropy(logits, targets[counted], reduction=reduction)


class InstructionTask(BaseTask):
    """Train on `train`, evaluate on `val` (an InstructionDataset each).

    - `pad_id` pads rows, `end_id` ends every response (the collate appends it);
    - `mask_prompt`: the instruction and input tokens get no loss (only the response and its end token do);
    - `group_by_length`: training batches of rows of similar length (less padding; order still random);
    - `samples`: entries answered by `respond` at each evaluation (the recipe takes three validation ones).
    The order of epoch e is a pure function of (seed, e); the last incomplete global batch is dropped (the
    book's `drop_last=True`).
    """

    name = "instruct"
    produces_text = True

    def __init__(self, train: InstructionDataset, val: InstructionDataset | None, pad_id: int, end_id: int,
                 mask_prompt: bool = False, group_by_length: bool = False, seed: int = 123,
                 samples: Sequence[dict] = (), tokenizer=None, chat_template: str | None = None,
                 sample_tokens: int = 64):
        self.train, self.val = train, val
        self.pad_id, self.end_id = int(pad_id), int(end_id)
        self.mask_prompt, self.group_by_length, self.seed = mask_prompt, group_by_length, seed
        self.samples = list(samples)
        self.tokenizer, self.chat_template, self.sample_tokens = tokenizer, chat_template, sample_tokens

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        return len(self.train) // (batch_size * world_size)

    def train_batches(self, epoch: int, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1
                      ) -> Iterator[InstructionBatch]:
        lengths = [len(r) for r in self.train.ids]
        step = batch_size * world_size  # one global batch: every rank takes every world_size-th row of it
        order = epoch_order(lengths, step, self.seed, epoch, self.group_by_length)
        for b in range(start, self.num_train_batches(batch_size, world_size)):
            rows = order[b * step : (b + 1) * step][rank::world_size]
            yield self.train.collate(rows, self.pad_id, self.end_id, self.mask_prompt)

    def val_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[InstructionBatch]:
        if self.val is None:
            return
        by_length = sorted(range(len(self.val)), key=lambda i: len(self.val.ids[i]))[rank::world_size]
        for s in range(0, len(by_length), batch_size):
            yield self.val.collate(by_length[s : s + batch_size], self.pad_id, self.end_id, self.mask_prompt)

    def loss(self, model, batch: InstructionBatch) -> torch.Tensor:
        inputs, targets = batch
        return instruction_loss(model, inputs, targets)

    def batch_tokens(self, batch: InstructionBatch) -> int:
        return int((batch[1] != IGNORE_INDEX).sum())  # tokens that carry a loss

    def respond(self, model, max_new_tokens: int | None = None) -> list[dict]:
        """Greedy answers of `model` to the sample entries: [{"instruction", "input", "response"}, ...]."""
        from llmscratch.evaluate.responses import generate_responses

        if not self.samples or self.tokenizer is None:
            return []
        samples, new_tokens = self._fitting_samples(model, max_new_tokens or self.sample_tokens)
        if not samples:
            return []
        texts = generate_responses(model, self.tokenizer, samples, self.train.fmt, self.chat_template, new_tokens,
                                   batch_size=len(samples))
        return [{"instruction": e["instruction"], "input": e.get("input", ""), "response": t}
                for e, t in zip(samples, texts)]

    def _fitting_samples(self, model, max_new_tokens: int) -> tuple[list[dict], int]:
        """The sample entries whose prompt leaves room for an answer in the model's context (a small model may have
        none), and the new tokens that fit after the longest of them (at most `max_new_tokens`)."""
        context = unwrap(model).config.context_length
        lengths = [len(encode_prompt(self.tokenizer, format_prompt(e, self.train.fmt, self.tokenizer,
                                                                   self.chat_template)))
                   for e in self.samples]
        fitting = [e for e, n in zip(self.samples, lengths) if n < context]
        longest = max((n for n in lengths if n < context), default=context)
        return fitting, min(max_new_tokens, context - longest)
