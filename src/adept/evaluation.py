"""Evaluation: held-out perplexity and multiple-choice benchmarks, base model versus adapted ones.

Reads checkpoints, held-out corpora (packed exactly like the training data) and benchmarks (local
multiple-choice JSONL files or tasks shipped with lm-evaluation-harness, run in-process and
offline, see `adept.multiple_choice`), and writes ``results.json`` (`adept.results`): one entry
per model plus a comparison against the first (base) model, i.e. forgetting on general data, gain
on domain data and, from each run's ``training_summary.json``, what the method cost. This is the
evaluation protocol of paper Sec. 4. The public names of both parts are importable from here too.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from adept.benchmarks import check_benchmark_source, is_benchmark_file, validate_benchmark_file
from adept.checkpoints import load_model_and_tokenizer
from adept.corpus_sources import resolve_corpus
from adept.defaults import (
    BENCHMARK_SEED,
    DEFAULT_ATTN_IMPLEMENTATION,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_TEXT_FIELD,
    EVAL_BATCH_SIZE,
)
from adept.forward import BlockBatches, count_targets, first_blocks, forward_batches, next_token_loss_sum
from adept.multiple_choice import local_task_config, run_benchmarks
from adept.probe_batches import IGNORE_INDEX
from adept.report_tables import benchmark_markdown, comparison_markdown
from adept.results import (
    DOMAINS,
    RESULTS_NAME,
    SUMMARY_NAME,
    compare_runs,
    default_label,
    load_training_summary,
    read_results,
    weighted_loss,
    write_results,
)

__all__ = [
    "DOMAINS",
    "RESULTS_NAME",
    "SUMMARY_NAME",
    "benchmark_markdown",
    "check_benchmark_source",
    "compare_runs",
    "comparison_markdown",
    "default_label",
    "evaluate_model",
    "evaluate_perplexity",
    "is_benchmark_file",
    "load_training_summary",
    "local_task_config",
    "read_results",
    "run_benchmarks",
    "run_evaluation",
    "validate_benchmark_file",
    "weighted_loss",
    "write_results",
]

logger = logging.getLogger(__name__)


# --- held-out perplexity -------------------------------------------------------------------


def evaluate_perplexity(
    model,
    tokenizer,
    path: str | os.PathLike,
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = EVAL_BATCH_SIZE,
    max_blocks: int | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    text_field: str = DEFAULT_TEXT_FIELD,
) -> dict[str, Any]:
    """Token-weighted mean next-token loss of ``model`` on a held-out corpus.

    The corpus is packed into ``block_size`` blocks by the same code as the training data, so
    a held-out loss is directly comparable with the training and eval losses of a run.

    Args:
        model: a causal LM; evaluated in eval mode without gradients on its own device.
        tokenizer: the model's tokenizer (needs an EOS token to join documents).
        path: held-out corpus: a file, glob or folder in any format ``adept.corpus_sources.resolve_corpus`` reads.
        block_size: tokens per packed block.
        batch_size: blocks per forward pass.
        max_blocks: evaluate only the first N blocks (all when None).
        progress: show a tqdm bar.
        cache_dir: where the packed corpus is cached (no cache when None).
        text_field: the text column of tabular corpora.

    Returns:
        ``{"loss", "perplexity", "tokens", "bytes", "bits_per_byte", "path"}``; ``tokens`` counts
        predicted tokens, ``bytes`` the UTF-8 bytes of their text, so ``bits_per_byte`` compares
        models whose tokenizers differ (a per-token loss does not).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dataset = first_blocks(path, tokenizer, block_size, max_blocks, cache_dir, text_field=text_field)
    total_loss = 0.0
    total_tokens = 0
    total_bytes = 0
    batches = BlockBatches(dataset, batch_size, ("input_ids", "labels"))
    for batch, logits in forward_batches(model, batches, desc=f"perplexity {Path(path).name}", progress=progress):
        labels = batch["labels"]
        total_loss += next_token_loss_sum(logits, labels).item()
        total_tokens += count_targets(labels)
        for row in labels[:, 1:].tolist():
            predicted = [token for token in row if token != IGNORE_INDEX]
            total_bytes += len(tokenizer.decode(predicted, skip_special_tokens=True).encode("utf-8"))
    loss = total_loss / total_tokens
    bits_per_byte = total_loss / math.log(2) / total_bytes if total_bytes else None
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "tokens": total_tokens,
        "bytes": total_bytes,
        "bits_per_byte": bits_per_byte,
        "path": str(path),
    }


# --- stage runner ----------------------------------------------------------------------------


def _unique_keys(paths: Sequence[str | os.PathLike]) -> list[str]:
    """File stems, lengthened with parent directories only where two stems collide."""
    resolved = [Path(p).resolve() for p in paths]
    for path, full in zip(paths, resolved):
        if resolved.count(full) > 1:
            raise ValueError(f"{path}: given more than once")
    keys = [full.stem for full in resolved]
    depth = 0
    while len(set(keys)) != len(keys):
        depth += 1
        clashing = {key for key in keys if keys.count(key) > 1}
        keys = [_path_tail(full, depth) if key in clashing else key for key, full in zip(keys, resolved)]
    return keys


def _path_tail(path: Path, depth: int) -> str:
    """``parent/.../stem`` with ``depth`` parents; the full path once the parents run out."""
    if depth >= len(path.parts) - 1:
        return str(path)
    return "/".join(path.parts[-depth - 1 : -1] + (path.stem,))


def _benchmark_keys(sources: Sequence[str | os.PathLike]) -> list[str]:
    files = [s for s in sources if is_benchmark_file(s)]
    file_keys = dict(zip(map(str, files), _unique_keys(files))) if files else {}
    keys = [file_keys.get(str(s), str(s)) for s in sources]
    if len(set(keys)) != len(keys):
        raise ValueError(f"benchmarks {sorted({k for k in keys if keys.count(k) > 1})}: given more than once")
    return keys


def evaluate_model(
    model,
    tokenizer,
    *,
    perplexity_sets: Sequence[tuple[str, str | os.PathLike, str]],
    benchmark_sets: Sequence[tuple[str, str | os.PathLike, str]],
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = EVAL_BATCH_SIZE,
    max_blocks: int | None = None,
    limit: int | float | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    seed: int = BENCHMARK_SEED,
    text_field: str = DEFAULT_TEXT_FIELD,
    limits: Mapping[str, int | float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Perplexity and benchmark entries of one loaded model; sets are ``(key, path, domain)``."""
    perplexity = {}
    for key, path, domain in perplexity_sets:
        entry = evaluate_perplexity(
            model, tokenizer, path, block_size, batch_size, max_blocks, progress, cache_dir, text_field=text_field
        )
        perplexity[key] = {**entry, "domain": domain}
    scores = run_benchmarks(
        model, tokenizer, {key: path for key, path, _ in benchmark_sets}, batch_size, limit, seed=seed, limits=limits
    )
    benchmarks = {key: {**scores[key], "domain": domain} for key, _, domain in benchmark_sets}
    return {"perplexity": perplexity, "benchmarks": benchmarks}


def run_evaluation(
    models: Sequence[tuple[str, str | os.PathLike]],
    output_dir: str | os.PathLike,
    *,
    general: Sequence[str | os.PathLike] = (),
    domain: Sequence[str | os.PathLike] = (),
    general_benchmarks: Sequence[str | os.PathLike] = (),
    domain_benchmarks: Sequence[str | os.PathLike] = (),
    block_size: int = DEFAULT_BLOCK_SIZE,
    batch_size: int = EVAL_BATCH_SIZE,
    max_blocks: int | None = None,
    limit: int | float | None = None,
    device: str = DEFAULT_DEVICE,
    dtype: str = DEFAULT_DTYPE,
    attn_implementation: str = DEFAULT_ATTN_IMPLEMENTATION,
    text_field: str = DEFAULT_TEXT_FIELD,
    summaries: Mapping[str, Mapping[str, Any] | None] | None = None,
    progress: bool = True,
    seed: int = BENCHMARK_SEED,
    limits: Mapping[str, int | float] | None = None,
) -> Path:
    """Evaluate every model on the same sets and write ``output_dir/results.json``.

    Args:
        models: ``(label, checkpoint)`` pairs; the first is the base every other run is compared with.
        output_dir: where ``results.json`` (and the packed-corpus cache ``.cache/``) go.
        general, domain: held-out corpora for perplexity.
        general_benchmarks, domain_benchmarks: multiple-choice JSONL files or lm-eval task names.
        block_size, batch_size, max_blocks: perplexity packing and batching.
        limit: at most this many questions per benchmark (a seeded subset of named benchmarks).
        seed: seed of the named benchmarks' item subset.
        limits: benchmark name (as in the results) -> its own limit in place of ``limit``.
        device, dtype, attn_implementation: where, in which precision and with which attention
            kernel models are loaded.
        text_field: the text column of tabular held-out corpora.
        summaries: label -> training summary; when None each checkpoint's own
            ``training_summary.json`` is looked up (see ``load_training_summary``).
        progress: show tqdm bars.
    """
    if not models:
        raise ValueError("give at least one --model")
    labels = [label for label, _ in models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"model labels must be unique, got {labels}")
    if not (general or domain or general_benchmarks or domain_benchmarks):
        raise ValueError("nothing to evaluate: give --general, --domain, --general-benchmark or --domain-benchmark")
    output_dir = Path(output_dir)
    corpora = [*general, *domain]
    corpus_domains = ["general"] * len(general) + ["domain"] * len(domain)
    for path in corpora:
        resolve_corpus(path)  # a missing file, or a glob that matches nothing, fails before any model loads
    perplexity_sets = list(zip(_unique_keys(corpora), corpora, corpus_domains)) if corpora else []
    benches = [*general_benchmarks, *domain_benchmarks]
    bench_domains = ["general"] * len(general_benchmarks) + ["domain"] * len(domain_benchmarks)
    benchmark_sets = list(zip(_benchmark_keys(benches), benches, bench_domains)) if benches else []
    for _, source, _ in benchmark_sets:
        check_benchmark_source(source)  # fail before loading any model
    unknown = sorted(set(limits or {}) - {key for key, _, _ in benchmark_sets})
    if unknown:
        raise ValueError(
            f"evaluation.limits names {unknown}, which are not among the benchmarks "
            f"{[key for key, _, _ in benchmark_sets]}"
        )
    if summaries is None:
        summaries = {label: load_training_summary(path) for label, path in models}

    runs = []
    for label, model_path in models:
        logger.info("evaluating %s (%s)", label, model_path)
        start = time.perf_counter()
        model, tokenizer = load_model_and_tokenizer(
            model_path, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        try:
            entries = evaluate_model(
                model,
                tokenizer,
                perplexity_sets=perplexity_sets,
                benchmark_sets=benchmark_sets,
                block_size=block_size,
                batch_size=batch_size,
                max_blocks=max_blocks,
                limit=limit,
                cache_dir=output_dir / ".cache",
                progress=progress,
                seed=seed,
                text_field=text_field,
                limits=limits,
            )
        finally:
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        runs.append({"label": label, "model": str(model_path), "seconds": time.perf_counter() - start, **entries})

    path = write_results(runs, summaries, output_dir / RESULTS_NAME)
    logger.info("evaluation written to %s", path)
    return path
