"""Tasks plug data, loss and metrics into the one Trainer (train/trainer.py).

A task owns its data set and knows how to turn a batch into a loss. The loop owns everything else: the
optimizer, the schedule, accumulation, clipping, evaluation, checkpoints, logging and distribution.

Batches are whatever the task yields (a tensor, or a tuple/list/dict of tensors); the loop moves every tensor
in them to the training device before calling `loss` or `metrics`.

The `model` given to `loss` and `metrics` may be wrapped (DistributedDataParallel, torch.compile): call it
(`model(ids, pad_mask=...)`, i.e. its forward) and use `llmscratch.train.distributed.unwrap(model)` for anything
else (its config, its head).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import torch

Batch = Any


@runtime_checkable
class Task(Protocol):
    """What the loop needs from a task (pretraining, classification, instruction tuning).

    - `name`: a short label for logs ("pretrain", "classify").
    - `produces_text`: True when the model generates text (the loop then prints a sample at each evaluation).
    - `train_batches(epoch, batch_size, start, rank, world_size)`: the micro-batches of one epoch for this rank,
      beginning at batch index `start`; the order is a pure function of (the task's seed, epoch), so training
      resumes at batch `start` exactly. With world_size > 1 the union of the ranks' batch i equals the batch i
      a single process would get with batch_size * world_size (so a run's global batch does not depend on the
      number of processes).
    - `num_train_batches(batch_size, world_size)`: how many batches `train_batches` yields per epoch per rank.
    - `val_batches(batch_size, rank, world_size)`: the validation batches of this rank (deterministic, unshuffled).
    - `loss(model, batch)`: the scalar mean loss of one batch (on the device, differentiable).
    - `metrics(model, batch)`: evaluation only: sums and counts per metric, e.g. {"accuracy": (n_correct, n)};
      may be {}. The loop adds them over batches (and ranks) and reports sum / count.
    - `evaluate_batch(model, batch)`: (loss, metrics) of one evaluation batch; a task whose loss and metrics
      share a forward pass computes it once here.
    - `batch_tokens(batch)`: the number of tokens in a batch (for tokens/s and tokens seen).
    """

    name: str
    produces_text: bool

    def train_batches(
        self, epoch: int, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> Iterator[Batch]: ...

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int: ...

    def val_batches(self, batch_size: int, rank: int = 0, world_size: int = 1) -> Iterable[Batch]: ...

    def loss(self, model, batch: Batch) -> torch.Tensor: ...

    def metrics(self, model, batch: Batch) -> dict[str, tuple[float, int]]: ...

    def evaluate_batch(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]: ...

    def batch_tokens(self, batch: Batch) -> int: ...


class BaseTask:
    """Defaults a task may inherit: no extra metrics, no text, tokens = elements of the first tensor."""

    name = "task"
    produces_text = False

    def metrics(self, model, batch: Batch) -> dict[str, tuple[float, int]]:
        return {}

    def evaluate_batch(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, tuple[float, int]]]:
        return self.loss(model, batch), self.metrics(model, batch)

    def batch_tokens(self, batch: Batch) -> int:
        return _first_tensor(batch).numel()


def _first_tensor(batch: Batch) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    values = batch.values() if isinstance(batch, dict) else batch
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"batch has no tensor: {type(batch).__name__}")


def move_to(batch: Batch, device: torch.device) -> Batch:
    """The batch with every tensor in it (nested in tuples, lists, dicts) moved to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


__all__ = ["Batch", "BaseTask", "Task", "move_to"]
