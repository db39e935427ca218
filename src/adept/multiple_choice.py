"""Multiple-choice benchmarks scored with lm-evaluation-harness, in process and offline.

Local multiple-choice JSONL files become generated task configs; named benchmarks
(`adept.benchmarks.NAMED_BENCHMARKS`) run the harness's own configs on local Arrow files; any
other name is a task shipped by lm-eval. Per-item scores are kept for intervals and paired
comparisons. lm_eval is imported inside `run_benchmarks`: a run without benchmarks never loads it.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from adept.benchmarks import (
    benchmark_size,
    check_benchmark_source,
    is_benchmark_file,
    is_named_benchmark,
    item_scores,
    named_task_config,
    offline_hub,
    subset_indices,
    summarize_items,
)
from adept.defaults import BENCHMARK_SEED, EVAL_BATCH_SIZE

_PROMPT = "Question: {{question}}\nAnswer:"


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
    batch_size: int = EVAL_BATCH_SIZE,
    limit: int | float | None = None,
    log_samples: bool = False,
    seed: int = BENCHMARK_SEED,
    limits: Mapping[str, int | float] | None = None,
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
        seed: seed of the named benchmarks' item subsets.
        limits: result name -> its own limit in place of ``limit`` (every item of the others and a
            fixed 2,000 of HellaSwag: ``limit=None, limits={"hellaswag": 2000}``).

    Returns:
        name -> ``{"acc", "acc_norm", "acc_stderr", "acc_ci", "acc_norm_ci", "n", "path", "items"}``
        (``path`` is the task name for named and lm-eval tasks; ``items`` holds per-item
        ``doc_id``, ``acc`` and ``acc_norm``; a metric a task does not report is None).
    """
    if not tasks:
        return {}
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    limits = dict(limits or {})
    unknown = sorted(set(limits) - set(tasks))
    if unknown:
        raise ValueError(f"evaluation.limits names {unknown}, which are not among the benchmarks {list(tasks)}")
    limit_of = {name: limits.get(name, limit) for name in tasks}
    local = {name: source for name, source in tasks.items() if is_benchmark_file(source)}
    named = {name: str(source) for name, source in tasks.items() if name not in local and is_named_benchmark(source)}
    for source in [*local.values(), *named.values()]:
        check_benchmark_source(source)
    subsets = {name: subset_indices(benchmark_size(source), limit_of[name], seed) for name, source in named.items()}
    with offline_hub(), tempfile.TemporaryDirectory(prefix="adept-lmeval-") as tmp:
        import lm_eval
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
        # lm-eval takes either a limit (first items) or item lists, so seeded subsets run on their own,
        # and the other tasks in one call per limit.
        seeded = [task_ids[name] for name in named if limit_of[name] is not None]
        rest: dict[int | float | None, list[str]] = {}
        for name, task in task_ids.items():
            if task not in seeded and all(task not in group for group in rest.values()):
                rest.setdefault(None if name in named else limit_of[name], []).append(task)
        outputs = []
        if seeded:
            samples = {task_ids[name]: subsets[name] for name in named if subsets[name] is not None}
            outputs.append(
                lm_eval.simple_evaluate(
                    model=lm, tasks=seeded, task_manager=manager, samples=samples or None, log_samples=True
                )
            )
        for group_limit, group in rest.items():
            outputs.append(
                lm_eval.simple_evaluate(
                    model=lm, tasks=group, task_manager=manager, limit=group_limit, log_samples=True
                )
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
