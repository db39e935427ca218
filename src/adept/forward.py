"""Running a model over batches of token blocks: the one batched forward loop of the package.

`forward_batches` puts the model in eval mode, moves each batch to the model's device, runs the
forward without gradients unless asked for them, shows a progress bar and yields the logits; the
callers keep only their reduction. Held-out perplexity (paper Sec. 4) and the token-distribution
shift (Fig. 5) run through it; it also takes padded batches with an attention mask and gradients
on, which is what the importance probe (Sec. 3.1) needs. Reads and writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from adept.architectures import get_decoder_layers
from adept.data import IGNORE_INDEX, build_packed_dataset
from adept.defaults import DEFAULT_TEXT_FIELD


def model_device(model: nn.Module) -> torch.device:
    """Where the model's (first) parameters live; inputs go there."""
    return next(model.parameters()).device


def first_blocks(
    path: str | os.PathLike,
    tokenizer,
    block_size: int,
    max_blocks: int | None = None,
    cache_dir=None,
    *,
    text_field: str = DEFAULT_TEXT_FIELD,
):
    """The first ``max_blocks`` blocks (all when None) of a corpus packed like the training data.

    Returns a ``datasets.Dataset`` with one uint32 ``input_ids`` column (see `build_packed_dataset`);
    `BlockBatches` derives the labels.
    """
    if max_blocks is not None and max_blocks < 1:
        raise ValueError(f"max_blocks must be at least 1, got {max_blocks}")
    dataset = build_packed_dataset(path, tokenizer, block_size, cache_dir=cache_dir, text_field=text_field)
    if max_blocks is not None:
        dataset = dataset.select(range(min(max_blocks, len(dataset))))
    return dataset


class BlockBatches(Sequence):
    """Consecutive ``batch_size`` rows of equal-length blocks, each batch a dict of LongTensors.

    ``rows`` is a ``datasets.Dataset`` (read one batch at a time, so a large corpus is never held
    as Python lists) or a mapping of column name to a tensor whose first dimension is the row.
    Asked for ``labels`` that ``rows`` does not store (packed blocks store only ``input_ids``),
    a batch gets a copy of its ``input_ids``: the model shifts them. uint32 ids become int64.
    """

    def __init__(self, rows, batch_size: int, columns: Sequence[str] = ("input_ids",)):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.columns = batch_size, tuple(columns)
        stored = set(rows) if isinstance(rows, Mapping) else set(rows.column_names)
        self.derived_labels = "labels" in self.columns and "labels" not in stored
        self.read = [name for name in self.columns if not (name == "labels" and self.derived_labels)]
        if self.derived_labels and "input_ids" not in self.read:
            self.read.append("input_ids")
        missing = [name for name in self.read if name not in stored]
        if missing:
            raise ValueError(f"rows have no column {missing} (columns: {sorted(stored)})")
        if isinstance(rows, Mapping):
            self.rows = rows
            self.num_rows = len(rows[self.read[0]])
        else:
            self.rows = rows.select_columns(self.read).with_format("numpy")
            self.num_rows = len(rows)

    def __len__(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        part = (
            {name: self.rows[name][rows] for name in self.read} if isinstance(self.rows, Mapping) else self.rows[rows]
        )
        batch = {name: _long_tensor(part[name]) for name in self.read}
        if self.derived_labels:
            batch["labels"] = batch["input_ids"].clone()
        return {name: batch[name] for name in self.columns}


def _long_tensor(values) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(torch.long)
    return torch.from_numpy(np.asarray(values, dtype=np.int64))


def forward_batches(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    inputs: Sequence[str] = ("input_ids",),
    grad: bool = False,
    desc: str | None = None,
    progress: bool = True,
    **model_kwargs,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Run ``model`` over ``batches`` in eval mode; yield each batch (on the model's device) and its logits.

    Args:
        model: a causal LM; put in eval mode for the loop and back in its former mode afterwards.
        batches: dicts of tensors, e.g. `BlockBatches` or the padded probe batches of
            `adept.data.make_batches`; keys not in ``inputs`` (labels, target ids) travel along.
        inputs: the batch keys passed to the model (``("input_ids", "attention_mask")`` for padded batches).
        grad: build the autograd graph (a gradient pass such as the importance probe); without it
            the forward runs under ``torch.no_grad``. Only the forward is switched, so the
            caller's code between batches runs in its own grad mode.
        desc: progress-bar label; ``progress`` shows the bar (tqdm).
        **model_kwargs: fixed model arguments, e.g. ``use_cache=False``.

    Yields:
        ``(batch, logits)`` per batch, in order.
    """
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
            batch = {key: value.to(device) for key, value in batch.items()}
            with torch.set_grad_enabled(grad):
                logits = model(**{key: batch[key] for key in inputs}, **model_kwargs).logits
            yield batch, logits
    finally:
        model.train(was_training)


def next_token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross entropy (in fp32) over the targets that are not ``IGNORE_INDEX``.

    A sum, not a mean, so totals over batches weigh every token equally.
    """
    return nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        labels[:, 1:].flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def count_targets(labels: torch.Tensor) -> int:
    """Targets `next_token_loss_sum` counts: labels after the first position that are not ``IGNORE_INDEX``."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def residual_updates(model, ids: torch.Tensor) -> list[float]:
    """|output - input| / |input| of every decoder layer on ``ids``: how far each layer moves the
    residual stream (a fresh copy, exactly 0)."""
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        captured.append((hidden.detach(), out.detach()))

    handles = [layer.register_forward_hook(hook, with_kwargs=True) for layer in get_decoder_layers(model)]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return [float((out - inp).norm() / inp.norm()) for inp, out in captured]
