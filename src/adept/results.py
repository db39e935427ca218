"""``results.json``: evaluated models and their comparison with the base model (paper Sec. 4).

One entry per model (held-out losses and benchmark scores) plus one comparison row per model
against the first: forgetting on general data, gain on domain data, accuracy changes with paired
intervals, and, from each run's ``training_summary.json``, what the method cost.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adept.artifacts import artifact_header, read_artifact, read_json, write_json
from adept.benchmarks import paired_difference

logger = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
SUMMARY_NAME = "training_summary.json"  # written by adept.training next to RUN/model/
DOMAINS = ("general", "domain")


def load_training_summary(model_path: str | os.PathLike) -> dict[str, Any] | None:
    """``training_summary.json`` of the run that produced ``model_path`` (its dir or the parent), or None.

    A file of that name without a ``kind`` was not written by adept (the shipped demo base model
    carries its pretraining script's summary) and is skipped; one that names another kind, or an
    unsupported schema version, is refused.
    """
    model_path = Path(model_path)
    for candidate in (model_path / SUMMARY_NAME, model_path.parent / SUMMARY_NAME):
        if not candidate.is_file():
            continue
        payload = read_json(candidate)
        if not isinstance(payload, dict) or "kind" not in payload:
            logger.info("%s: not an adept training summary, ignored", candidate)
            continue
        return read_json(candidate, kind="training")
    return None


def default_label(model_path: str | os.PathLike) -> str:
    """The run directory's name for ``RUN/model``, else the checkpoint directory's name."""
    path = Path(model_path).resolve()
    if path.name == "model" and (path.parent / SUMMARY_NAME).is_file():
        return path.parent.name
    return path.name


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
