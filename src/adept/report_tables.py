"""The evaluation tables: methods against the base model, held-out perplexity and benchmarks.

Reads the ``results.json`` rows that `adept.evaluation` writes (paper Sec. 4: forgetting on
general data, gain on domain data, cost) and presents them twice: as report sections (tables
with the best adapted value highlighted, and the forgetting-vs-gain scatter) and as the Markdown
tables ``adept eval`` and ``adept run`` print. Computes nothing that results.json lacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adept.artifacts import finite_number
from adept.plots import plot_forgetting_gain
from adept.report_sections import Figure, Heading, RunArtifacts, Table, Text, format_cell, none_found

# (key, header, style, which value is best: "min", "max" or None)
COMPARISON_COLUMNS = (
    ("general_loss", "general loss", "fixed", "min"),
    ("general_loss_change", "Δ general loss", "signed", "min"),
    ("general_loss_change_pct", "Δ general loss %", "pct", "min"),
    ("domain_loss", "domain loss", "fixed", "min"),
    ("domain_loss_change", "Δ domain loss", "signed", "min"),
    ("domain_loss_change_pct", "Δ domain loss %", "pct", "min"),
    ("general_acc", "general acc", "fixed", "max"),
    ("general_acc_change", "Δ general acc", "signed", "max"),
    ("domain_acc", "domain acc", "fixed", "max"),
    ("domain_acc_change", "Δ domain acc", "signed", "max"),
    ("trainable_parameters", "trainable params", "int", None),
    ("trainable_share", "trainable share", "share", None),
    ("wall_seconds", "wall time", "seconds", "min"),
    ("tokens_per_second", "tokens/s", "int", "max"),
    ("peak_memory_bytes", "peak memory", "bytes", "min"),
)


def best_cells(
    values: list[list[float | None]], directions: Sequence[str | None], skip_rows: set[int]
) -> set[tuple[int, int]]:
    """Cells holding the best value of their column, among rows not in ``skip_rows``."""
    best = set()
    for col, direction in enumerate(directions):
        if direction is None:
            continue
        candidates = [(row[col], r) for r, row in enumerate(values) if r not in skip_rows and row[col] is not None]
        if len(candidates) < 2:
            continue
        low, high = min(v for v, _ in candidates), max(v for v, _ in candidates)
        if low == high:  # a tie everywhere singles nothing out
            continue
        target = low if direction == "min" else high
        best.update((r, col) for v, r in candidates if v == target)
    return best


# --- report sections ---------------------------------------------------------------------------


def comparison_blocks(runs: list[RunArtifacts], labels: dict[tuple[str, str], str], output_dir: Path) -> list[Any]:
    """Every comparison row, the forgetting-vs-gain scatter (drawn into ``output_dir``) and held-out perplexities."""
    evaluated = [run for run in runs if run.evaluation is not None]
    if not evaluated:
        return [none_found("eval/results.json")]
    several = len(runs) > 1
    columns = ["label", "method"] + [header for _, header, _, _ in COMPARISON_COLUMNS]
    rows, values, base_rows, points = [], [], set(), []
    for run in evaluated:
        base = run.evaluation.get("base")
        for row in run.evaluation.get("comparison") or []:
            label = labels[(run.name, str(row.get("label")))]
            if row.get("label") == base:
                base_rows.add(len(rows))
            rows.append(
                [label, format_cell(row.get("method"), "text")]
                + [format_cell(row.get(key), style) for key, _, style, _ in COMPARISON_COLUMNS]
            )
            values.append([None, None] + [finite_number(row.get(key)) for key, _, _, _ in COMPARISON_COLUMNS])
            x, y = finite_number(row.get("general_loss_change_pct")), finite_number(row.get("domain_loss_change_pct"))
            if row.get("label") != base and x is not None and y is not None:
                group = str(row.get("method") or row.get("label"))
                points.append(
                    {"x": x, "y": y, "label": label if not several else group, "group": group, "run": run.name}
                )
    directions = [None, None] + [best for _, _, _, best in COMPARISON_COLUMNS]
    blocks: list[Any] = [
        Text(
            "Losses on the general and domain held-out sets against the base model; Δ columns are changes from the "
            "base "
            "(negative loss change = better). Highlighted: best value among the adapted models."
        ),
        Table(columns, rows, best_cells(values, directions, base_rows)),
    ]
    if points:
        path = plot_forgetting_gain(points, output_dir / "forgetting_gain.png")
        blocks.append(Figure(path, "One point per method" + (" and run directory." if several else ".")))
    else:
        blocks.append(Text("No row has both a general and a domain loss change, so there is no scatter plot."))
    blocks += _perplexity_blocks(evaluated, labels)
    return blocks


def _perplexity_blocks(runs: list[RunArtifacts], labels: dict[tuple[str, str], str]) -> list[Any]:
    sets: dict[str, str] = {}
    for run in runs:
        for entry in run.evaluation.get("runs") or []:
            for name, result in (entry.get("perplexity") or {}).items():
                sets.setdefault(name, str((result or {}).get("domain") or "-"))
    if not sets:
        return []
    columns = ["label"] + [f"{name} ({domain}) ppl" for name, domain in sets.items()]
    rows, values, base_rows = [], [], set()
    for run in runs:
        for entry in run.evaluation.get("runs") or []:
            if entry.get("label") == run.evaluation.get("base"):
                base_rows.add(len(rows))
            results = entry.get("perplexity") or {}
            ppl = [finite_number((results.get(name) or {}).get("perplexity")) for name in sets]
            rows.append([labels[(run.name, str(entry.get("label")))]] + [format_cell(v, "fixed") for v in ppl])
            values.append([None] + ppl)
    best = best_cells(values, [None] + ["min"] * len(sets), base_rows)
    return [Heading("Held-out perplexity"), Table(columns, rows, best)]


def benchmark_blocks(runs: list[RunArtifacts], labels: dict[tuple[str, str], str]) -> list[Any]:
    """Accuracy of every model on every benchmark task, the best adapted model per task highlighted."""
    entries = []
    for run in runs:
        if not run.evaluation:
            continue
        base = run.evaluation.get("base")
        changes = {str(row.get("label")): row.get("benchmarks") or {} for row in run.evaluation.get("comparison") or []}
        for entry in run.evaluation.get("runs") or []:
            label = str(entry.get("label"))
            for task, result in (entry.get("benchmarks") or {}).items():
                result = result or {}
                change = (changes.get(label, {}).get(task) or {}).get("change")
                entries.append((task, labels[(run.name, label)], label == base, result, change))
    if not entries:
        what = (
            "eval/results.json" if not any(run.evaluation for run in runs) else "benchmark results in eval/results.json"
        )
        return [none_found(what)]
    entries.sort(key=lambda e: e[0])
    columns = ["task", "domain", "label", "n", "acc", "± stderr", "acc_norm", "Δ acc vs base"]
    rows, highlight = [], set()
    for task in dict.fromkeys(e[0] for e in entries):
        group = [e for e in entries if e[0] == task]
        values = [[finite_number(r.get("acc"))] for _, _, is_base, r, _ in group]
        best = best_cells(values, ["max"], {i for i, e in enumerate(group) if e[2]})
        for i, (_, label, _, result, change) in enumerate(group):
            if (i, 0) in best:
                highlight.add((len(rows), 4))
            rows.append(
                [
                    task,
                    format_cell(result.get("domain"), "text"),
                    label,
                    format_cell(result.get("n"), "int"),
                    format_cell(result.get("acc"), "fixed"),
                    format_cell(result.get("acc_stderr"), "fixed"),
                    format_cell(result.get("acc_norm"), "fixed"),
                    format_cell(change, "signed"),
                ]
            )
    return [Table(columns, rows, highlight), Text("Highlighted: best accuracy per task among the adapted models.")]


# --- the Markdown tables the CLI prints -------------------------------------------------------


def _cell(value: float | None, change: float | None, fmt: str, change_fmt: str, unit: str = "") -> str:
    if value is None:
        return "–"
    text = format(value, fmt)
    return f"{text} ({format(change, change_fmt)}{unit})" if change is not None else text


def comparison_markdown(results: Mapping[str, Any]) -> str:
    """The comparison of ``results.json`` as a Markdown table (Δ against the base model)."""
    header = [
        "method",
        "general loss (Δ%)",
        "domain loss (Δ%)",
        "general acc (Δ)",
        "domain acc (Δ)",
        "trainable share",
        "wall s",
        "peak mem GiB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in results["comparison"]:
        name = row["method"] if row["method"] == row["label"] else f"{row['method']} ({row['label']})"
        share = row.get("trainable_share")
        wall = row.get("wall_seconds")
        peak = row.get("peak_memory_bytes")
        cells = [
            name,
            _cell(row["general_loss"], row["general_loss_change_pct"], ".4f", "+.2f", "%"),
            _cell(row["domain_loss"], row["domain_loss_change_pct"], ".4f", "+.2f", "%"),
            _cell(row["general_acc"], row["general_acc_change"], ".3f", "+.3f"),
            _cell(row["domain_acc"], row["domain_acc_change"], ".3f", "+.3f"),
            "–" if share is None else f"{100 * share:.1f}%",
            "–" if wall is None else f"{wall:.0f}",
            "–" if peak is None else f"{peak / 2**30:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _interval_cell(value: float | None, ci: Sequence[float] | None, fmt: str = ".3f") -> str:
    if value is None:
        return "–"
    return f"{format(value, fmt)} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else format(value, fmt)


def benchmark_markdown(results: Mapping[str, Any]) -> str:
    """Every benchmark of ``results.json`` per model: acc and acc_norm with 95% intervals, and the
    paired difference from the base model on the same items (empty when there are no benchmarks)."""
    rows = {row["label"]: row for row in results["comparison"]}
    header = [
        "benchmark",
        "model",
        "n",
        "acc [95% CI]",
        "acc_norm [95% CI]",
        "Δ acc vs base [95% CI]",
        "Δ acc_norm vs base [95% CI]",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    tasks = list(dict.fromkeys(task for run in results["runs"] for task in run["benchmarks"]))
    for task in tasks:
        for run in results["runs"]:
            entry = run["benchmarks"].get(task)
            if entry is None:
                continue
            paired = rows.get(run["label"], {}).get("benchmarks", {}).get(task, {}).get("paired") or {}
            cells = [
                task,
                run["label"],
                "–" if entry.get("n") is None else str(entry["n"]),
                _interval_cell(entry.get("acc"), entry.get("acc_ci")),
                _interval_cell(entry.get("acc_norm"), entry.get("acc_norm_ci")),
            ]
            for metric in ("acc", "acc_norm"):
                diff = paired.get(metric) if run["label"] != results["base"] else None
                cells.append("–" if not diff else _interval_cell(diff["diff"], diff["ci"], "+.3f"))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" if tasks else ""
