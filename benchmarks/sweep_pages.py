"""What the experiment pages of ``benchmarks/`` share: forgetting on a second held-out source, the gaps
between fronts question by question and the one read at the middle of the common gains, and the
per-rate means over seeds.

Imported by the page scripts beside it (``python benchmarks/<page>.py`` puts this folder on the path).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adept.artifacts import read_json, write_json
from adept.checkpoints import load_model_and_tokenizer
from adept.config import load_config
from adept.evaluation import evaluate_perplexity
from adept.fronts import front_gaps, label_of
from adept.fronts_report import gap_cell, gap_row, markdown_table
from adept.run_directory import train_dir
from adept.sweep import RECORD_NAME, report_root, run_sweep

# Austen: neither the probe's source (State of the Union) nor trained on by any sweep point.
SECOND_HELDOUT = "data/demo/general/heldout.jsonl"
SECOND_MAX_BLOCKS = 64  # 16,320 predicted tokens, four times the State of the Union held-out set


def read_sweep(
    config: str, saved: dict[str, Any] | None, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Path]]:
    """A sweep as a page reads it: its record seeded from ``saved`` (the copy committed with the page) on a
    machine without one, then its report rewritten from what is done, nothing trained or dialled
    (``max_runs=0``). Returns (the record, its rows as `adept.fronts` data, the report's paths); raises
    FileNotFoundError before the sweep's first point."""
    cfg = load_config(config, list(overrides))
    if saved and not (report_root(cfg) / RECORD_NAME).is_file():
        write_json(report_root(cfg) / RECORD_NAME, saved)
    paths = run_sweep(config, list(overrides), max_runs=0)
    front = read_json(paths["json"], kind="fronts")
    data = {
        "seeds": {int(s): rows for s, rows in front["runs"].items()},
        "base": {int(s): b for s, b in front["base"].items()},
    }
    return front, data, paths


def second_source_losses(cfg, root: Path, data: dict[str, Any], record: Path, corpus: str, max_blocks: int) -> dict:
    """Held-out loss on ``corpus`` of the base model and of every finished point whose model is on this machine.

    Each loss is kept in ``record`` as soon as it exists (keyed ``base`` and ``seed:label``), so the work
    resumes model by model and a new machine keeps the losses of run directories it does not have.
    """
    saved = read_json(record) if record.is_file() else {}
    if saved.get("corpus") != corpus or saved.get("max_blocks") != max_blocks:
        saved = {"corpus": corpus, "max_blocks": max_blocks, "losses": {}}
    losses = saved["losses"]
    todo = [("base", Path(cfg.model))]
    for seed, rows in data["seeds"].items():
        todo += [(f"{seed}:{label}", train_dir(root / f"seed{seed}", label) / "model") for label in rows]
    for key, model_dir in todo:
        if key in losses or not model_dir.is_dir():
            continue
        print(f"second held-out source: {key}", flush=True)
        model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu", dtype="float32")
        result = evaluate_perplexity(
            model, tokenizer, corpus, cfg.data.block_size, cfg.evaluation.batch_size, max_blocks, progress=False
        )
        losses[key] = result["loss"]
        write_json(record, saved)
    return saved


def second_source_view(data: dict[str, Any], losses: dict[str, float]) -> dict[str, Any]:
    """``data`` with each row's forgetting read on the second source; rows without that loss are left out."""
    view = {"seeds": {}, "base": data["base"]}
    for seed, rows in data["seeds"].items():
        view["seeds"][seed] = {}
        for label, row in rows.items():
            loss = losses.get(f"{seed}:{label}")
            if loss is not None and "base" in losses:
                view["seeds"][seed][label] = {**copy.deepcopy(row), "forgetting_pct": 100 * (loss / losses["base"] - 1)}
    return view


def mean_table(data: dict[str, Any], fronts, first: str = "rule") -> list[str]:
    """Per front and rate: the mean over seeds of gain and forgetting, with the seeds' range."""
    rows = []
    for rate in sorted({r for f in fronts for r in f.rates}):
        for front in fronts:
            label = label_of(front, rate)
            runs = [rows_[label] for rows_ in data["seeds"].values() if label in rows_]
            if not runs:
                continue
            cells = [front.name, front.tag(rate), str(len(runs))]
            for key in ("gain_pct", "forgetting_pct"):
                values = [r[key] for r in runs]
                cells.append(f"{sum(values) / len(values):+.2f} ({min(values):+.2f} to {max(values):+.2f})")
            rows.append(cells)
    columns = [
        first,
        "alpha" if all(f.dial for f in fronts) else "rate",
        "seeds",
        "domain-loss gain % (seeds' range)",
        "general-loss change % (seeds' range)",
    ]
    return markdown_table(columns, rows, "llrrr")


def middle_answer(table: dict[str, Any], rule: str) -> str:
    """The gap at the middle of the common gains, and what it says: an interval that holds 0 is no difference."""
    if rule not in table:
        return "undecided: the fronts share no gain yet"
    gap = table[rule]["gaps"][1]
    cell = gap_cell(gap) + (", fronts apart" if table[rule].get("apart") else "")
    if gap["n"] == 0:
        return "undecided: no seed's two fronts both reach it"
    if gap["ci"] is None:
        return f"{cell}: one seed only, no interval"
    if gap["ci"][1] < 0:
        return f"**less forgetting**, {cell}"
    if gap["ci"][0] > 0:
        return f"**more forgetting**, {cell}"
    return f"no difference, {cell}"


def gap_tables(data: dict[str, Any], asked: list[tuple[str, Any, Any]]) -> tuple[list[list[str]], dict[str, Any]]:
    """Per question: the gap row (range, the three positions, verdict) and the same as data."""
    rows, table = [], {}
    for question, a, b in asked:
        entry = front_gaps(data, a, b)
        rows.append(gap_row(question, entry))
        if entry is not None:
            table[question] = entry
    return rows, table
