"""Classification as a training task: cross-entropy on the last real token's class logits, accuracy as metric.

Batches are right-padded (`llmscratch.data.classification.collate_classification`); `predict` labels new
texts the same way. The prediction is read at
each row's last real token. Right padding needs no attention mask: attention is causal, so a real token never
sees the padding after it, and its output is the same as without padding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmscratch.data.classification import ClassificationDataset, collate_classification, encode_text
from llmscratch.data.pretrain import EpochSampler
from llmscratch.train.evaluate import eval_outputs
from llmscratch.train.tasks import BaseTask
from llmscratch.utils import UserError

# (input_ids (B, T), attention_mask (B, T) bool, last_index (B,), labels (B,)): a tuple, so the loop moves it.
ClassifyBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def last_token_logits(model, input_ids: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """Class logits (B, num_classes) read at each row's last real token of a right-padded batch."""
    logits = model(input_ids)  # (B, T, num_classes)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return logits[rows, last_index]  # (B, num_classes)


class ClassificationTask(BaseTask):
    """Train on `train`, evaluate on `val`: loss = cross-entropy of the last-token logits; metric = accuracy.

    The training order of epoch e is a pure function of (seed, e): `EpochSampler`'s permutation, cut into
    batches; the last incomplete global batch is dropped (as the book's `drop_last=True`).
    """

    name = "classify"
    produces_text = False

    def __init__(self, train: ClassificationDataset, val: ClassificationDataset, pad_id: int, seed: int = 123):
        self.train = train
        self.val = val
        self.pad_id = int(pad_id)
        self.seed = seed

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        return len(self.train) // (batch_size * world_size)

    def train_batches(
        self, epoch: int, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[ClassifyBatch]:
        sampler = EpochSampler(
            len(self.train), shuffle=True, seed=self.seed, rank=rank, world_size=world_size, drop_last=True
        )
        order = sampler.order(epoch)
        for b in range(start, self.num_train_batches(batch_size, world_size)):
            yield collate_rows(self.train, order[b * batch_size : (b + 1) * batch_size], self.pad_id)

    def val_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterator[ClassifyBatch]:
        yield from eval_batches(self.val, batch_size, self.pad_id, rank, world_size)

    def loss(self, model, batch: ClassifyBatch) -> torch.Tensor:
        ids, _, last, labels = batch
        return F.cross_entropy(last_token_logits(model, ids, last), labels)

    def metrics(self, model, batch: ClassifyBatch) -> dict[str, tuple[float, int]]:
        ids, _, last, labels = batch
        return _accuracy(last_token_logits(model, ids, last), labels)

    def evaluate_batch(self, model, batch: ClassifyBatch) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
        ids, _, last, labels = batch
        logits = last_token_logits(model, ids, last)  # one forward pass for the loss and the accuracy
        return F.cross_entropy(logits, labels), _accuracy(logits, labels)

    def batch_tokens(self, batch: ClassifyBatch) -> int:
        return int(batch[1].sum())


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, tuple[float, int]]:
    return {"accuracy": (float((logits.argmax(dim=-1) == labels).sum()), len(labels))}


def eval_batches(
    dataset: ClassificationDataset, batch_size: int, pad_id: int, rank: int = 0, world_size: int = 1
) -> Iterator[ClassifyBatch]:
    """Batches of `dataset` for this rank (every row once when world_size == 1), rows sorted by length so that
    a batch holds little padding (evaluation only: the order does not change sums and counts)."""
    by_length = sorted(range(len(dataset)), key=lambda i: len(dataset.encoded[i]))
    indices = by_length[rank::world_size]
    for i in range(0, len(indices), batch_size):
        yield collate_rows(dataset, indices[i : i + batch_size], pad_id)


def collate_rows(dataset: Sequence[tuple[torch.Tensor, int]], indices: list[int], pad_id: int) -> ClassifyBatch:
    """Rows `indices` of `dataset` ((ids, label) pairs) as one right-padded batch tuple."""
    b = collate_classification([dataset[i] for i in indices], pad_id)
    return b.input_ids, b.attention_mask, b.last_index, b.labels


@dataclass
class Prediction:
    """The predicted label of one text and the probability of every label."""

    text: str
    label: str
    probabilities: dict[str, float]


def predict(
    model, tokenizer, texts: Sequence[str], label_names: Sequence[str], max_length: int, pad_id: int,
    batch_size: int = 16,
) -> list[Prediction]:
    """Classify each text (its first `max_length` tokens, as in training) through the one evaluation loop:
    right-padded batches of similar lengths, class probabilities at each text's last token."""
    encoded = [_encode(tokenizer, t, max_length) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    rows = [(torch.tensor(ids), 0) for ids in encoded]
    batches = (collate_rows(rows, c, pad_id) for c in chunks)

    def probabilities(m, batch: ClassifyBatch) -> torch.Tensor:
        ids, _, last, _ = batch
        return torch.softmax(last_token_logits(m, ids, last).float(), dim=-1).cpu()  # (B, num_classes)

    device = next(model.parameters()).device
    out: list[Prediction | None] = [None] * len(texts)
    for chunk, (_, probs) in zip(chunks, eval_outputs(model, batches, probabilities, device)):
        for i, p in zip(chunk, probs):
            out[i] = Prediction(texts[i], label_names[int(p.argmax())], dict(zip(label_names, map(float, p))))
    return out


def _encode(tokenizer, text: str, max_length: int) -> list[int]:
    if not text.strip():
        raise UserError("cannot classify an empty text")
    ids = encode_text(tokenizer, text)[:max_length]  # BOS first for models that expect it (Gemma)
    if not ids:
        raise UserError(f"the text {text!r} encodes to no tokens")
    return ids
