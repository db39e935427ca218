"""Token-distribution shift between a base model and its adapted version (paper Fig. 5).

At every position of a packed held-out corpus, the adapted model's top-1 token is ranked in the
base model's next-token distribution: rank 1 is "unshifted", ranks 2-3 "marginal", deeper ranks
"shifted". Few shifted positions mean the adaptation changed what the model predicts only where
it had to. ``run_shift`` loads one model at a time and writes ``shift.json`` and ``shift.png``.
"""

from __future__ import annotations

import gc
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adept.artifacts import artifact_header, write_json
from adept.checkpoints import load_model_and_tokenizer, read_model_config
from adept.corpus_sources import resolve_corpus
from adept.defaults import (
    DEFAULT_ATTN_IMPLEMENTATION,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_TEXT_FIELD,
    EVAL_BATCH_SIZE,
    SHIFT_MAX_BLOCKS,
    SHIFT_TOP_K,
)
from adept.forward import BlockBatches, first_blocks, forward_batches
from adept.plots import CATEGORIES, plot_shift

logger = logging.getLogger(__name__)

SHIFT_NAME = "shift.json"
SHIFT_PLOT_NAME = "shift.png"


def packed_blocks(
    tokenizer,
    path: str | os.PathLike,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_blocks: int | None = SHIFT_MAX_BLOCKS,
    cache_dir=None,
    text_field: str = DEFAULT_TEXT_FIELD,
):
    """The first ``max_blocks`` packed blocks of a corpus as a ``(blocks, block_size)`` LongTensor."""
    blocks = first_blocks(path, tokenizer, block_size, max_blocks, cache_dir, text_field=text_field).with_format(
        "numpy"
    )
    return torch.from_numpy(np.asarray(blocks["input_ids"], dtype=np.int64))


def top1_tokens(model, blocks, batch_size: int = EVAL_BATCH_SIZE, progress: bool = True):
    """The model's most likely next token at every position of ``blocks`` (same shape)."""
    outputs = forward_batches(
        model, BlockBatches({"input_ids": blocks}, batch_size), desc="top-1 tokens", progress=progress
    )
    return torch.cat([logits.argmax(dim=-1).cpu() for _, logits in outputs])


def ranks_of(model, blocks, token_ids, batch_size: int = EVAL_BATCH_SIZE, progress: bool = True):
    """1-based rank of ``token_ids`` in the model's next-token distribution at each position.

    The rank is one plus the number of tokens with a strictly higher logit, so a token tied for
    first place counts as rank 1.
    """
    out = []
    batches = BlockBatches({"input_ids": blocks, "token_ids": token_ids}, batch_size, ("input_ids", "token_ids"))
    for batch, logits in forward_batches(model, batches, desc="base ranks", progress=progress):
        logits, wanted = logits.float(), batch["token_ids"]
        if int(wanted.max()) >= logits.shape[-1]:
            raise ValueError(
                f"the tuned model predicts token id {int(wanted.max())}, beyond the base vocabulary of "
                f"{logits.shape[-1]}"
            )
        chosen = logits.gather(-1, wanted.unsqueeze(-1))
        out.append((logits > chosen).sum(dim=-1).cpu() + 1)
    return torch.cat(out)


def summarize_shift(ranks, tuned_top1, tokenizer, top_k: int = SHIFT_TOP_K) -> dict[str, Any]:
    """Category shares, a rank histogram and the tokens most often shifted."""
    ranks = ranks.flatten()
    tuned_top1 = tuned_top1.flatten()
    positions = int(ranks.numel())
    if positions == 0:
        raise ValueError("no positions to compare")
    shifted_mask = ranks > 3
    counts = {
        "unshifted": int((ranks == 1).sum()),
        "marginal": int(((ranks >= 2) & (ranks <= 3)).sum()),
        "shifted": int(shifted_mask.sum()),
    }
    histogram = {
        "1": int((ranks == 1).sum()),
        "2": int((ranks == 2).sum()),
        "3": int((ranks == 3).sum()),
        "4-10": int(((ranks >= 4) & (ranks <= 10)).sum()),
        ">10": int((ranks > 10).sum()),
    }
    shifted_tokens = Counter(tuned_top1[shifted_mask].tolist())
    n_shifted = counts["shifted"]
    top = [
        {
            "token": tokenizer.decode([token_id]),
            "token_id": int(token_id),
            "count": count,
            "share_of_shifted": count / n_shifted,
        }
        for token_id, count in shifted_tokens.most_common(top_k)
    ]
    return {
        "positions": positions,
        "changed_top1_share": (positions - counts["unshifted"]) / positions,
        "categories": {name: counts[name] / positions for name in CATEGORIES},
        "rank_histogram": histogram,
        "top_shifted_tokens": top,
    }


def token_shift(
    base_model,
    tuned_model,
    tokenizer,
    path: str | os.PathLike,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_blocks: int | None = SHIFT_MAX_BLOCKS,
    top_k: int = SHIFT_TOP_K,
    batch_size: int = EVAL_BATCH_SIZE,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank the tuned model's top-1 token in the base distribution at every held-out position.

    Args:
        base_model: the model before adaptation.
        tuned_model: the adapted model (may have more layers; must share the vocabulary).
        tokenizer: the shared tokenizer.
        path: held-out corpus, packed like the training data.
        block_size: tokens per packed block.
        max_blocks: compare only the first N blocks (all when None).
        top_k: how many of the most often shifted tokens to list.

    Returns:
        ``{"positions", "changed_top1_share", "categories", "rank_histogram", "top_shifted_tokens"}``.
    """
    blocks = packed_blocks(tokenizer, path, block_size, max_blocks, cache_dir)
    tuned_top1 = top1_tokens(tuned_model, blocks, batch_size, progress)
    ranks = ranks_of(base_model, blocks, tuned_top1, batch_size, progress)
    return summarize_shift(ranks, tuned_top1, tokenizer, top_k)


def _same_vocabulary(base_tokenizer, tuned_tokenizer) -> bool:
    return base_tokenizer.get_vocab() == tuned_tokenizer.get_vocab()


def run_shift(
    base_path: str | os.PathLike,
    tuned_path: str | os.PathLike,
    data_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    max_blocks: int | None = SHIFT_MAX_BLOCKS,
    top_k: int = SHIFT_TOP_K,
    batch_size: int = EVAL_BATCH_SIZE,
    device: str = DEFAULT_DEVICE,
    dtype: str = DEFAULT_DTYPE,
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
    text_field: str = DEFAULT_TEXT_FIELD,
    progress: bool = True,
) -> Path:
    """Compare two checkpoints on a held-out corpus; write ``shift.json`` and ``shift.png``.

    The tuned model runs first and only its top-1 ids are kept, so one model is in memory at a time.
    """
    output_dir = Path(output_dir)
    for checkpoint in (base_path, tuned_path):
        read_model_config(checkpoint)  # fail on a wrong path before running either model
    resolve_corpus(data_path)  # a missing file, or a glob that matches nothing, fails before any model loads
    cache_dir = output_dir / ".cache"

    tuned, tokenizer = load_model_and_tokenizer(
        tuned_path, device=device, dtype=dtype, attn_implementation=attn_implementation
    )
    blocks = packed_blocks(tokenizer, data_path, block_size, max_blocks, cache_dir, text_field=text_field)
    tuned_top1 = top1_tokens(tuned, blocks, batch_size, progress)
    del tuned
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

    base, base_tokenizer = load_model_and_tokenizer(
        base_path, device=device, dtype=dtype, attn_implementation=attn_implementation
    )
    if not _same_vocabulary(base_tokenizer, tokenizer):
        raise ValueError(f"{base_path} and {tuned_path}: the tokenizers differ, so token ranks cannot be compared")
    ranks = ranks_of(base, blocks, tuned_top1, batch_size, progress)
    del base

    result = summarize_shift(ranks, tuned_top1, tokenizer, top_k)
    payload = {
        **artifact_header("shift"),
        "base": str(base_path),
        "tuned": str(tuned_path),
        "data": str(data_path),
        "block_size": block_size,
        "max_blocks": max_blocks,
        **result,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = write_json(output_dir / SHIFT_NAME, payload)
    plot_shift(result, output_dir / SHIFT_PLOT_NAME, title=f"{Path(tuned_path).name} vs {Path(base_path).name}")
    logger.info("token shift written to %s", path)
    return path
