"""The one evaluation loop: a model run over batches in eval mode, without gradients.

`eval_outputs` yields what a function makes of each batch (the Trainer's validation, a fine-tuned classifier's
final accuracy and its predictions all go through it); `task_sums` adds a task's loss and metrics over batches.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from llmscratch.train.tasks import Batch, Task, move_to

Sums = dict[str, list[float]]  # metric -> [sum, count]


def batch_rows(batch: Batch) -> int:
    """Number of examples in a batch (its first tensor's first dimension)."""
    from llmscratch.train.tasks import _first_tensor

    t = _first_tensor(batch)
    return int(t.shape[0]) if t.dim() else 1


def eval_outputs(
    model: nn.Module,
    batches: Iterable[Batch],
    fn: Callable[[nn.Module, Batch], object],
    device: torch.device,
    *,
    autocast=contextlib.nullcontext,
    max_batches: int | None = None,
    desc: str | None = None,
    total: int | None = None,
) -> Iterator[tuple[int, object]]:
    """(rows, fn(model, batch)) for each batch moved to `device`, in eval mode and without gradients.

    The model's train/eval mode is restored afterwards. With `desc`, a progress bar of that name counts rows
    (out of `total`).
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    bar = tqdm(total=total, desc=desc, unit="row", disable=desc is None, leave=False)
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            batch = move_to(batch, device)
            with torch.no_grad(), autocast():
                out = fn(model, batch)
            rows = batch_rows(batch)
            bar.update(rows)
            yield rows, out
    finally:
        bar.close()
        model.train(was_training)


def task_sums(
    model: nn.Module, task: Task, batches: Iterable[Batch], device: torch.device, *, loss_only: bool = False, **kw
) -> Sums:
    """The task's loss (weighted by rows) and metrics added over `batches`: {"loss": [sum, rows], name: [s, c]}.

    `loss_only`: `task.loss` instead of `task.evaluate_batch` (no metrics). Keyword arguments go to `eval_outputs`.
    """

    def both(m, batch):
        return (task.loss(m, batch), {}) if loss_only else task.evaluate_batch(m, batch)

    sums: Sums = {"loss": [0.0, 0.0]}
    for rows, (loss, metrics) in eval_outputs(model, batches, both, device, **kw):
        sums["loss"][0] += float(loss) * rows
        sums["loss"][1] += rows
        for k, (s, c) in metrics.items():
            acc = sums.setdefault(k, [0.0, 0.0])
            acc[0] += float(s)
            acc[1] += float(c)
    return sums


def merge_sums(parts: Iterable[Sums]) -> Sums:
    """The sums of several processes added together."""
    merged: Sums = {}
    for part in parts:
        for k, (s, c) in part.items():
            acc = merged.setdefault(k, [0.0, 0.0])
            acc[0] += s
            acc[1] += c
    return merged


def means(sums: Sums) -> dict[str, float | None]:
    """sum / count per metric (None where nothing was counted)."""
    return {k: (s / c if c else None) for k, (s, c) in sums.items()}
