"""The run directory of `adept run`: where every stage writes, so stages hand over through files.

::

    config.yaml                     resolved config, written first
    pipeline.json                   stage records
    data/data.json                  corpus sizes in documents, tokens and blocks
    importance/                     importance.json + PNGs (Stage 1)
    expanded/adept, expanded/uniform   expanded checkpoints (importance-guided, LLaMA-Pro)
    train/<label>/                  checkpoints, unit_rates.jsonl, training_summary.json, model/
    eval/<label>/results.json       one model's evaluation
    eval/results.json               all of them compared with the base model
    shift/<label>/                  shift.json + shift.png against the base model
    report/index.html, report.md

`adept.stage_records` keeps ``pipeline.json``; `adept.pipeline` runs the stages.
"""

from __future__ import annotations

from pathlib import Path

from adept.results import RESULTS_NAME

BASE_LABEL = "base"


def train_dir(run_dir: Path, label: str) -> Path:
    """Where one method's training lands in a run directory: ``train/<label>/`` (model, summary, logs)."""
    return Path(run_dir) / "train" / label


def dial_label(label: str, alpha: float) -> str:
    """The label of a trained model moved back towards its start by ``alpha``: ``adept@1e-3~0.5``."""
    return f"{label}~{alpha:g}"


def expanded_dir(run_dir: Path, variant: str) -> Path:
    """Where one expanded checkpoint lands in a run directory: ``expanded/<variant>/`` (``adept`` or ``uniform``)."""
    return Path(run_dir) / "expanded" / variant


def results_path(run_dir: Path, label: str) -> Path:
    """Where one model's evaluation lands in a run directory: ``eval/<label>/results.json``."""
    return Path(run_dir) / "eval" / label / RESULTS_NAME


def comparison_path(run_dir: Path) -> Path:
    """Where the models of a run directory are compared side by side: ``eval/results.json``."""
    return Path(run_dir) / "eval" / RESULTS_NAME


def run_directory_contents(run_dir: Path) -> list[str]:
    """What `adept run` prints at its end: the run directory's parts that exist, and the results file."""
    lines = [f"run directory: {run_dir}"]
    for name, what in (
        ("importance", "layer and unit importance + plots"),
        ("expanded", "expanded checkpoints + expansion.json"),
        ("train", "per-method checkpoints, unit_rates.jsonl, model/"),
        ("shift", "token-distribution shift"),
    ):
        if (run_dir / name).is_dir():
            lines.append(f"  {run_dir / name}/: {what}")
    return [*lines, f"results: {run_dir / 'eval' / 'results.json'}"]
