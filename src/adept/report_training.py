"""The report's sections about training: per-unit learning rates (paper Sec. 3.3), losses and token shift (Fig. 5).

Built from a `RunArtifacts` into the blocks of `adept.report_sections`, like the other sections.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from adept.artifacts import finite_number
from adept.plots import plot_losses, plot_unit_rates
from adept.report_sections import (
    TOP_TOKENS,
    Figure,
    Heading,
    RunArtifacts,
    Table,
    Text,
    copy_png,
    format_cell,
    none_found,
)


def rate_blocks(run: RunArtifacts, image_name) -> list[Any]:
    """Per-unit learning-rate multipliers of each method at every re-estimation: a chart and min/mean/max."""
    if not run.unit_rates:
        return [none_found("train/*/unit_rates.jsonl (no method logged per-unit rates)")]
    blocks: list[Any] = []
    for method, history in run.unit_rates.items():
        blocks.append(Heading(f"{method}"))
        try:
            path = plot_unit_rates(history, image_name(run, f"rates_{method}"), f"{method}: per-unit LR multipliers")
            blocks.append(
                Figure(path, f"{method}: learning-rate multiplier of every trainable unit at each re-estimation.")
            )
        except (ValueError, TypeError) as err:
            run.problems.append(f"train/{method}/unit_rates.jsonl: cannot draw the rates ({err})")
        rows = []
        for entry in history:
            values = [v for v in map(finite_number, entry["multipliers"].values()) if v is not None]
            spread = entry.get("distribution")
            rows.append(
                [
                    format_cell(entry.get("step"), "text"),
                    str(len(values)),
                    format_cell(min(values) if values else None, "score"),
                    format_cell(sum(values) / len(values) if values else None, "score"),
                    format_cell(spread.get("parameter_mean") if isinstance(spread, Mapping) else None, "score"),
                    format_cell(max(values) if values else None, "score"),
                ]
            )
        blocks.append(
            Table(
                ["step", "units", "min multiplier", "mean multiplier", "parameter-weighted mean", "max multiplier"],
                rows,
            )
        )
        table = multiplier_distribution_table((run.trainings.get(method) or {}).get("multiplier_distribution"))
        if table is not None:
            blocks.append(
                Text(
                    "Mean multiplier per unit type, at the first assignment and the last refresh "
                    "(training_summary.json); weighted by parameters it is the run's rate over the base rate."
                )
            )
            blocks.append(table)
    return blocks


def multiplier_distribution_table(distribution: Any) -> Table | None:
    """The ``multiplier_distribution`` of a training summary as one table (None when absent or unreadable).

    One row for all trainable units, then one per unit type; for the first assignment and the last
    refresh, the mean over units and the mean weighted by parameters.
    """
    if not isinstance(distribution, Mapping):
        return None
    first, last = distribution.get("first"), distribution.get("last")
    if not isinstance(first, Mapping) or not isinstance(last, Mapping):
        return None
    types = [kind for kind in (first.get("by_type") or {}) if isinstance(kind, str)]

    def means(summary: Any) -> list[str]:
        summary = summary if isinstance(summary, Mapping) else {}
        return [format_cell(summary.get("unit_mean"), "score"), format_cell(summary.get("parameter_mean"), "score")]

    rows = [
        [
            "all trainable units",
            format_cell(first.get("units"), "int"),
            format_cell(first.get("parameters"), "int"),
            *means(first),
            *means(last),
        ]
    ]
    for kind in types:
        now, then = first["by_type"][kind], (last.get("by_type") or {}).get(kind)
        now = now if isinstance(now, Mapping) else {}
        rows.append(
            [
                kind,
                format_cell(now.get("units"), "int"),
                format_cell(now.get("parameters"), "int"),
                *means(now),
                *means(then),
            ]
        )
    at = [format_cell(first.get("step"), "text"), format_cell(last.get("step"), "text")]
    columns = [
        "unit type",
        "units",
        "parameters",
        f"step {at[0]}: unit mean",
        f"step {at[0]}: parameter mean",
        f"step {at[1]}: unit mean",
        f"step {at[1]}: parameter mean",
    ]
    return Table(columns, rows)


def loss_blocks(run: RunArtifacts, image_name) -> list[Any]:
    """Loss curves of every trained method and what each run cost."""
    if not run.trainings:
        return [none_found("train/*/training_summary.json")]
    blocks: list[Any] = []
    histories = {method: summary.get("log_history") or [] for method, summary in run.trainings.items()}
    path = plot_losses(histories, image_name(run, "losses"), "Training loss (solid) and held-out losses (dashed)")
    if path is not None:
        blocks.append(Figure(path, "Loss against optimizer step for every trained method."))
    else:
        blocks.append(Text("The training summaries hold no logged losses."))
    columns = [
        "method",
        "steps",
        "train loss",
        "trainable params",
        "trainable share",
        "trainable layers",
        "wall time",
        "tokens/s",
        "peak memory",
        "re-estimation time",
    ]
    rows = []
    for method, s in run.trainings.items():
        layers = s.get("trainable_layers")
        rows.append(
            [
                str(s.get("method") or method),
                format_cell(s.get("global_step"), "int"),
                format_cell(s.get("train_loss"), "fixed"),
                format_cell(s.get("trainable_parameters"), "int"),
                format_cell(s.get("trainable_share"), "share"),
                ", ".join(map(str, layers)) if isinstance(layers, list) else "all",
                format_cell(s.get("wall_seconds"), "seconds"),
                format_cell(s.get("tokens_per_second"), "int"),
                format_cell(s.get("peak_memory_bytes"), "bytes"),
                format_cell(s.get("reestimation_seconds"), "seconds"),
            ]
        )
    blocks.append(Table(columns, rows))
    return blocks


def shift_blocks(runs: list[RunArtifacts], image_name) -> list[Any]:
    """Token-shift shares of every tuned model, its chart and the tokens most often shifted."""
    if not any(run.shifts or run.shift_pngs for run in runs):
        return [none_found("shift/*/shift.json")]
    several = len(runs) > 1
    columns = ["method", "base", "tuned", "positions", "changed top-1", "unshifted", "marginal", "shifted"]
    rows = []
    for run in runs:
        for method, shift in run.shifts.items():
            cats = shift.get("categories") or {}
            rows.append(
                [
                    f"{run.name}/{method}" if several else method,
                    format_cell(shift.get("base"), "text"),
                    format_cell(shift.get("tuned"), "text"),
                    format_cell(shift.get("positions"), "int"),
                    format_cell(shift.get("changed_top1_share"), "share"),
                    format_cell(cats.get("unshifted"), "share"),
                    format_cell(cats.get("marginal"), "share"),
                    format_cell(cats.get("shifted"), "share"),
                ]
            )
    blocks: list[Any] = []
    if rows:
        blocks += [
            Text(
                "Share of token positions whose base-model token is unshifted, marginal or shifted in the tuned "
                "model's ranking; changed top-1 = share of positions whose most likely token changed."
            ),
            Table(columns, rows),
        ]
    for run in runs:
        for method in sorted(set(run.shifts) | set(run.shift_pngs)):
            name = f"{run.name}/{method}" if several else method
            blocks.append(Heading(name))
            if method in run.shift_pngs:
                target = copy_png(run, run.shift_pngs[method], image_name(run, f"shift_{method}"))
                if target:
                    blocks.append(Figure(target, f"{name}: token distribution shift."))
            shift = run.shifts.get(method)
            if shift is None:
                continue
            if shift.get("data"):
                blocks.append(Text(f"Measured on {shift['data']}."))
            tokens = shift.get("top_shifted_tokens") or []
            if tokens:
                blocks.append(
                    Table(
                        ["#", "token", "token_id", "count", "share of shifted"],
                        [
                            [
                                str(i),
                                repr(str(t.get("token"))),
                                format_cell(t.get("token_id"), "text"),
                                format_cell(t.get("count"), "int"),
                                format_cell(t.get("share_of_shifted"), "share"),
                            ]
                            for i, t in enumerate(tokens[:TOP_TOKENS], 1)
                        ],
                    )
                )
    return blocks
