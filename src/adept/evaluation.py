"""Evaluation: held-out perplexity and multiple-choice benchmarks, base model versus adapted ones.

Reads checkpoints, held-out corpora (packed exactly like the training data) and benchmarks (local
multiple-choice JSONL files or tasks shipped with lm-evaluation-harness, run in-process and
offline), and writes ``results.json``: one entry per model plus a comparison against the first
(base) model, i.e. forgetting on general data, gain on domain data and, from each run's
``training_summary.json``, what the method cost. This is the evaluation protocol of paper Sec. 4.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adept.artifacts import artifact_header, read_artifact, read_json, write_json
from adept.benchmarks import benchmark_files, is_named_benchmark, offline_hub, paired_difference
from adept.data import iter_jsonl, resolve_corpus
from adept.report_tables import benchmark_markdown, comparison_markdown  # noqa: F401  (the CLI imports them from here)

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
SUMMARY_NAME = "training_summary.json"  # written by adept.training next to RUN/model/
DOMAINS = ("general", "domain")
_PROMPT = "Question: {{question}}\nAnswer:"


# --- held-out perplexity -------------------------------------------------------------------


def evaluate_perplexity(
    model,
    tokenizer,
    path: str | os.PathLike,
    block_size: int = 256,
    batch_size: int = 8,
    max_blocks: int | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
    text_field: str = "text",
) -> dict[str, Any]:
    """Token-weighted mean next-token loss of ``model`` on a held-out corpus.

    The corpus is packed into ``block_size`` blocks by the same code as the training data, so
    a held-out loss is directly comparable with the training and eval losses of a run.

    Args:
        model: a causal LM; evaluated in eval mode without gradients on its own device.
        tokenizer: the model's tokenizer (needs an EOS token to join documents).
        path: held-out corpus: a file, glob or folder in any format ``adept.data.resolve_corpus`` reads.
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
    from adept.data import IGNORE_INDEX
    from adept.forward import BlockBatches, count_targets, first_blocks, forward_batches, next_token_loss_sum

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


# --- multiple-choice benchmarks through lm-evaluation-harness -----------------------------------


def validate_benchmark_file(path: str | os.PathLike) -> int:
    """Check a multiple-choice JSONL file line by line; return the number of questions.

    Each non-empty line must be ``{"question": str, "choices": [str, ...], "answer": int}`` with
    at least two choices and ``0 <= answer < len(choices)``. Errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: benchmark file not found")
    if path.suffix.lower() != ".jsonl":
        raise ValueError(f"{path}: benchmark files must be .jsonl with one question per line")
    count = 0
    for where, item in iter_jsonl(path):
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(item).__name__}")
        for key in ("question", "choices", "answer"):
            if key not in item:
                raise ValueError(f"{where}: missing key '{key}' (expected question, choices, answer)")
        if not isinstance(item["question"], str):
            raise ValueError(f"{where}: 'question' must be a string")
        choices = item["choices"]
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"{where}: 'choices' must be a list of at least two strings")
        answer = item["answer"]
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise ValueError(f"{where}: 'answer' must be an integer index into 'choices', got {answer!r}")
        if not 0 <= answer < len(choices):
            raise ValueError(f"{where}: 'answer' {answer} is out of range for {len(choices)} choices")
        count += 1
    if count == 0:
        raise ValueError(f"{path}: no questions found")
    return count


def is_benchmark_file(source: str | os.PathLike) -> bool:
    """A benchmark given as an existing path or a ``.jsonl`` name is a local file, else a named or lm-eval task."""
    return Path(source).suffix.lower() == ".jsonl" or Path(source).exists()


def _merge_outputs(outputs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One lm-eval output from several ``simple_evaluate`` calls over disjoint tasks."""
    merged: dict[str, Any] = {"results": {}, "n-samples": {}, "group_subtasks": {}, "samples": {}}
    for output in outputs:
        for key in merged:
            merged[key].update(output.get(key) or {})
    return merged


def local_task_config(task: str, path: str | os.PathLike, cache_dir: str | os.PathLike) -> dict[str, Any]:
    """lm-eval task config for a local multiple-choice JSONL file (zero-shot, acc and acc_norm)."""
    return {
        "task": task,
        "dataset_path": "json",
        # A private datasets cache keeps the run from writing into (or reading stale copies from) ~/.cache.
        "dataset_kwargs": {"data_files": {"test": str(Path(path).resolve())}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": _PROMPT,
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{answer}}",
        "num_fewshot": 0,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }


def _task_id(index: int, name: str) -> str:
    """A task name that cannot collide with a task shipped by lm-eval."""
    return f"adept_local_{index}_" + re.sub(r"[^A-Za-z0-9_]+", "_", name)


def _metric(results: Mapping[str, Any], name: str) -> float | None:
    for key in (f"{name},none", name):
        value = results.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if math.isfinite(value) else None
    return None


def _sample_count(output: Mapping[str, Any], task: str) -> int | None:
    counts = output.get("n-samples", {})
    if task in counts:
        return int(counts[task]["effective"])
    subtasks = output.get("group_subtasks", {}).get(task)
    if subtasks:
        found = [_sample_count(output, sub) for sub in subtasks]
        return sum(n for n in found if n is not None)
    return None


def run_benchmarks(
    model,
    tokenizer,
    tasks: Mapping[str, str | os.PathLike],
    batch_size: int = 8,
    limit: int | float | None = None,
    log_samples: bool = False,
    seed: int = 1234,
) -> dict[str, dict[str, Any]]:
    """Score ``model`` on multiple-choice benchmarks with lm-evaluation-harness, in-process.

    Local ``.jsonl`` files are validated, turned into generated task configs in a temporary
    directory and read with the ``json`` dataset builder (``limit`` takes their first items).
    Named benchmarks (``adept.benchmarks.NAMED_BENCHMARKS``: arc_easy, hellaswag, ...) run the
    harness's own task config on local Arrow files; ``limit`` takes a subset of their items
    seeded by ``seed``, the same for every model. Any other value is passed through as the name
    of a task shipped by lm-eval (its data must already be in the local cache, since the Hub is
    switched off for the whole run). Per-item scores are kept, so every result has 95% Wilson
    intervals and two models can be compared item by item (``compare_runs``).

    Args:
        model: a loaded causal LM (kept on its device).
        tokenizer: its tokenizer.
        tasks: result name -> local JSONL path or lm-eval task name.
        batch_size: lm-eval batch size.
        limit: at most this many questions per task (a float below 1 is a fraction).
        log_samples: also return lm-eval's per-question records under ``"samples"``.

    Returns:
        name -> ``{"acc", "acc_norm", "acc_stderr", "acc_ci", "acc_norm_ci", "n", "path", "items"}``
        (``path`` is the task name for named and lm-eval tasks; ``items`` holds per-item
        ``doc_id``, ``acc`` and ``acc_norm``; a metric a task does not report is None).
    """
    from adept.benchmarks import (
        benchmark_size,
        is_named_benchmark,
        item_scores,
        named_task_config,
        subset_indices,
        summarize_items,
    )

    if not tasks:
        return {}
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    local = {name: source for name, source in tasks.items() if is_benchmark_file(source)}
    named = {name: str(source) for name, source in tasks.items() if name not in local and is_named_benchmark(source)}
    for source in local.values():
        validate_benchmark_file(source)
    subsets = {name: subset_indices(benchmark_size(source), limit, seed) for name, source in named.items()}
    with offline_hub(), tempfile.TemporaryDirectory(prefix="adept-lmeval-") as tmp:
        import lm_eval
        import yaml
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        task_dir = Path(tmp) / "tasks"
        task_dir.mkdir()
        task_ids: dict[str, str] = {}
        for index, (name, source) in enumerate(tasks.items()):
            if name in local:
                task_ids[name] = _task_id(index, name)
                config = local_task_config(task_ids[name], source, Path(tmp) / "datasets")
                (task_dir / f"{task_ids[name]}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            elif name in named:
                task_ids[name] = _task_id(index, name)
                config = named_task_config(named[name], task_ids[name], Path(tmp) / "datasets")
                (task_dir / f"{task_ids[name]}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            else:
                task_ids[name] = str(source)
        # Indexing the ~15k shipped task configs takes seconds; do it only when one is asked for.
        manager = TaskManager(include_path=str(task_dir), include_defaults=len(local) + len(named) < len(tasks))
        for name, task in task_ids.items():
            if name not in local and name not in named and task not in manager.all_tasks:
                raise ValueError(
                    f"benchmark '{name}': '{task}' is neither a .jsonl file, a named benchmark nor a task known to "
                    "lm-eval"
                )
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        # lm-eval takes either a limit (first items) or item lists, so seeded subsets run on their own.
        seeded = [task_ids[name] for name in named if limit is not None]
        rest = [task for task in dict.fromkeys(task_ids.values()) if task not in seeded]
        outputs = []
        if seeded:
            samples = {task_ids[name]: subsets[name] for name in named if subsets[name] is not None}
            outputs.append(
                lm_eval.simple_evaluate(
                    model=lm, tasks=seeded, task_manager=manager, samples=samples or None, log_samples=True
                )
            )
        if rest:
            outputs.append(
                lm_eval.simple_evaluate(model=lm, tasks=rest, task_manager=manager, limit=limit, log_samples=True)
            )
        output = _merge_outputs(outputs)
    scores: dict[str, dict[str, Any]] = {}
    for name, task in task_ids.items():
        metrics = output["results"].get(task, {})
        items = item_scores(output["samples"].get(task, []))
        scores[name] = {
            "acc": _metric(metrics, "acc"),
            "acc_norm": _metric(metrics, "acc_norm"),
            "acc_stderr": _metric(metrics, "acc_stderr"),
            "acc_ci": None,
            "acc_norm_ci": None,
            "n": _sample_count(output, task),
            "path": str(tasks[name]),
        }
        scores[name].update(summarize_items(items))
        if name in named:
            scores[name]["subset_seed"] = seed if subsets[name] is not None else None
        scores[name]["items"] = items
        if log_samples:
            scores[name]["samples"] = output["samples"].get(task, [])
    return scores


# --- stage runner ----------------------------------------------------------------------------


def load_training_summary(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """``training_summary.json`` of the run that produced ``model_path`` (its dir or the parent), or None."""
    model_path = Path(model_path)
    for candidate in (model_path / SUMMARY_NAME, model_path.parent / SUMMARY_NAME):
        if candidate.is_file():
            return read_json(candidate, kind="training")
    return None


def default_label(model_path: str | os.PathLike) -> str:
    """The run directory's name for ``RUN/model``, else the checkpoint directory's name."""
    path = Path(model_path).resolve()
    if path.name == "model" and (path.parent / SUMMARY_NAME).is_file():
        return path.parent.name
    return path.name


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


def weighted_loss(entries: Mapping[str, Mapping[str, Any]], domain: str) -> float | None:
    """Token-weighted mean loss over the held-out sets of one side (``general`` or ``domain``)."""
    chosen = [e for e in entries.values() if e["domain"] == domain]
    tokens = sum(e["tokens"] for e in chosen)
    return sum(e["loss"] * e["tokens"] for e in chosen) / tokens if tokens else None


def _mean_acc(entries: Mapping[str, Mapping[str, Any]], domain: str) -> float | None:
    values = [e["acc"] for e in entries.values() if e["domain"] == domain and e["acc"] is not None]
    return sum(values) / len(values) if values else None


def _diff(value: float | None, reference: float | None) -> float | None:
    return None if value is None or reference is None else value - reference


def _pct(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else 100.0 * (value - reference) / reference


def compare_runs(
    runs: Sequence[Mapping[str, Any]], summaries: Mapping[str, Mapping[str, Any] | None]
) -> list[dict[str, Any]]:
    """One comparison row per run against the first one (the base model, whose changes are 0).

    Loss changes are forgetting on general data (positive = forgot) and gain on domain data
    (negative = learned); accuracies are means over each domain's benchmarks.
    """
    base = runs[0]
    base_general = weighted_loss(base["perplexity"], "general")
    base_domain = weighted_loss(base["perplexity"], "domain")
    base_general_acc = _mean_acc(base["benchmarks"], "general")
    base_domain_acc = _mean_acc(base["benchmarks"], "domain")
    rows = []
    for run in runs:
        summary = summaries.get(run["label"]) or {}
        general = weighted_loss(run["perplexity"], "general")
        domain = weighted_loss(run["perplexity"], "domain")
        general_acc = _mean_acc(run["benchmarks"], "general")
        domain_acc = _mean_acc(run["benchmarks"], "domain")
        benchmarks = {}
        for task, entry in run["benchmarks"].items():
            base_entry = base["benchmarks"].get(task, {})
            benchmarks[task] = {"acc": entry["acc"], "change": _diff(entry["acc"], base_entry.get("acc"))}
            if entry.get("items") and base_entry.get("items"):
                # Same items for both models: the paired difference and its own interval.
                benchmarks[task]["paired"] = {
                    metric: paired_difference(base_entry["items"], entry["items"], metric)
                    for metric in ("acc", "acc_norm")
                }
        rows.append(
            {
                "label": run["label"],
                "method": summary.get("method") or run["label"],
                "general_loss": general,
                "domain_loss": domain,
                "general_loss_change": _diff(general, base_general),
                "general_loss_change_pct": _pct(general, base_general),
                "domain_loss_change": _diff(domain, base_domain),
                "domain_loss_change_pct": _pct(domain, base_domain),
                "general_acc": general_acc,
                "domain_acc": domain_acc,
                "general_acc_change": _diff(general_acc, base_general_acc),
                "domain_acc_change": _diff(domain_acc, base_domain_acc),
                "benchmarks": benchmarks,
                **{
                    key: summary.get(key)
                    for key in (
                        "trainable_parameters",
                        "trainable_share",
                        "wall_seconds",
                        "tokens_per_second",
                        "peak_memory_bytes",
                    )
                },
            }
        )
    return rows


def evaluate_model(
    model,
    tokenizer,
    *,
    perplexity_sets: Sequence[tuple[str, str | os.PathLike, str]],
    benchmark_sets: Sequence[tuple[str, str | os.PathLike, str]],
    block_size: int = 256,
    batch_size: int = 8,
    max_blocks: int | None = None,
    limit: int | float | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
    seed: int = 1234,
    text_field: str = "text",
) -> dict[str, dict[str, Any]]:
    """Perplexity and benchmark entries of one loaded model; sets are ``(key, path, domain)``."""
    perplexity = {}
    for key, path, domain in perplexity_sets:
        entry = evaluate_perplexity(
            model, tokenizer, path, block_size, batch_size, max_blocks, progress, cache_dir, text_field=text_field
        )
        perplexity[key] = {**entry, "domain": domain}
    scores = run_benchmarks(
        model, tokenizer, {key: path for key, path, _ in benchmark_sets}, batch_size, limit, seed=seed
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
    block_size: int = 256,
    batch_size: int = 8,
    max_blocks: int | None = None,
    limit: int | float | None = None,
    device: str = "auto",
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    text_field: str = "text",
    summaries: Mapping[str, Mapping[str, Any] | None] | None = None,
    progress: bool = True,
    seed: int = 1234,
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
        device, dtype, attn_implementation: where, in which precision and with which attention
            kernel models are loaded.
        text_field: the text column of tabular held-out corpora.
        summaries: label -> training summary; when None each checkpoint's own
            ``training_summary.json`` is looked up (see ``load_training_summary``).
        progress: show tqdm bars.
    """
    import torch

    from adept.checkpoints import load_model_and_tokenizer

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
        if is_benchmark_file(source):
            validate_benchmark_file(source)  # fail before loading any model
        elif is_named_benchmark(source):
            benchmark_files(str(source))
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


def write_results(
    runs: Sequence[Mapping[str, Any]], summaries: Mapping[str, Mapping[str, Any] | None], path: str | os.PathLike
) -> Path:
    """``results.json`` for evaluated runs (the first is the base) with their comparison rows."""
    payload = {
        **artifact_header("evaluation"),
        "base": runs[0]["label"],
        "runs": list(runs),
        "comparison": compare_runs(runs, summaries),
    }
    return write_json(path, payload)


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``results.json`` (a file or the directory holding it)."""
    return read_artifact(path, RESULTS_NAME, "evaluation")
