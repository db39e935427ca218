"""The fronts as people read them: tables, notes and plot series, and the sweep's report page.

Reads the seed-grouped rows of ``adept.fronts``; writes nothing but the report that
``write_fronts_report`` renders with the run report's templates (HTML and Markdown).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adept.artifacts import artifact_header, write_json, write_text
from adept.fronts import (
    GAP_POSITIONS,
    Front,
    at_gain,
    best_rate,
    efficient,
    fastest,
    front_gaps,
    front_points,
    front_values,
    label_of,
    mean_over_rates,
    rate_name,
    seed_counts,
    seed_range,
)
from adept.plots import plot_curves, plot_fronts
from adept.report import HTML_NAME, MARKDOWN_NAME, REPORT_DIR, render
from adept.report_sections import Figure, Items, Section, Table, Text

# --- tables and notes -----------------------------------------------------------------------


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def paired_cell(paired: dict[str, Any] | None, scale: float = 100) -> str:
    """A paired accuracy change in points, with its 95% interval."""
    if not paired:
        return "–"
    ci = paired.get("ci")
    interval = f" [{ci[0] * scale:+.1f}, {ci[1] * scale:+.1f}]" if ci else ""
    return f"{paired['diff'] * scale:+.1f}{interval}"


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> list[str]:
    """Markdown lines of a table; ``align`` has one letter per column, ``l`` or ``r``."""
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(columns) + " |", rule, *("| " + " | ".join(row) + " |" for row in rows)]


GRID_COLUMNS = [
    "method",
    "rate",
    "general loss Δ%",
    "domain loss Δ%",
    "general acc Δ (pts, 95% CI)",
    "domain acc_norm Δ (pts, 95% CI)",
    "trainable %",
    "tokens/s",
    "peak mem GiB",
    "run min",
]


def grid_rows(data: dict[str, Any], fronts: Sequence[Front]) -> list[list[str]]:
    """One row per finished run (per seed where several ran), in grid order."""
    rows_out = []
    for front in fronts:
        for rate in front.rates:
            label = label_of(front, rate)
            for seed, rows in data["seeds"].items():
                row = rows.get(label)
                if not row:
                    continue
                name = front.name if len(data["seeds"]) == 1 else f"{front.name} (seed {seed})"
                share, peak, seconds = row["trainable_share"], row["peak_memory_bytes"], row["run_seconds"]
                rows_out.append(
                    [
                        name,
                        front.tag(rate),
                        fmt(row["general_loss_change_pct"], "+.2f"),
                        fmt(row["domain_loss_change_pct"], "+.2f"),
                        paired_cell(row["general_acc_change"]),
                        paired_cell(row["domain_acc_change"]),
                        fmt(share and 100 * share, ".1f"),
                        fmt(row["tokens_per_second"], ".0f"),
                        fmt(peak and peak / 2**30, ".2f"),
                        fmt(seconds and seconds / 60, ".0f"),
                    ]
                )
    return rows_out


def matched_table(
    data: dict[str, Any], fronts: Sequence[Front], anchors: Sequence[str], reference: str
) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """Every front's forgetting (loss and benchmarks) at the best gain of each front in ``anchors``,
    and its time per token and peak memory relative to ``reference``'s.

    Returns (columns, rows, the same as JSON).
    """
    points_of = {front.name: front for front in fronts}
    found = {}
    for name in anchors:
        best = best_rate(data, points_of[name]) if name in points_of else None
        if best:
            found[name] = best
    columns = ["method", "rates done"]
    for name, (_, gain) in found.items():
        columns += [f"general loss Δ% at {name}'s gain ({gain:.1f}%)", "general acc Δ (pts) at that gain"]
    columns += [f"time/token ÷ {reference}", f"peak mem ÷ {reference}"]
    table: dict[str, Any] = {"anchors": {k: {"rate": r, "gain_pct": g} for k, (r, g) in found.items()}, "rows": {}}
    ref = points_of.get(reference)
    ref_tps = fastest(data, ref) if ref else None
    ref_mem = mean_over_rates(data, ref, "peak_memory_bytes") if ref else None
    rows = []
    for front in fronts:
        loss_points = front_points(data, front, "forgetting_pct")
        acc_points = front_points(data, front, "general_acc_change")
        if not loss_points:
            continue
        cells = [front.name, str(len(loss_points))]
        entry: dict[str, Any] = {}
        for name, (_, gain) in found.items():
            loss, kind = at_gain(loss_points, gain)
            on_front = {rate for rate, _, _ in efficient(loss_points)}
            acc, _ = at_gain(acc_points, gain, on_front)
            reach = max(g for _, g, _ in loss_points)
            mark = "≤ " if kind == "upper" else ""
            cells.append(f"{mark}{loss:+.2f}" if loss is not None else f"not reached (max {reach:.1f}%)")
            cells.append(f"{mark}{100 * acc:+.1f}" if acc is not None and loss is not None else "–")
            entry[name] = {"general_loss_change_pct": loss, "general_acc_change": acc, "kind": kind}
        tps = fastest(data, front)
        mem = mean_over_rates(data, front, "peak_memory_bytes")
        time_ratio = ref_tps / tps if tps and ref_tps else None
        mem_ratio = mem / ref_mem if mem and ref_mem else None
        cells += [fmt(time_ratio, ".2f"), fmt(mem_ratio, ".2f")]
        entry.update(time_per_token_vs_full=time_ratio, peak_memory_vs_full=mem_ratio)
        table["rows"][front.name] = entry
        rows.append(cells)
    return columns, rows, table


def gap_cell(gap: dict[str, Any]) -> str:
    """A seed-by-seed gap in points of general-loss change, with its 95% interval and seed count."""
    if gap["mean"] is None:
        return "–"
    interval = f" [{gap['ci'][0]:+.2f}, {gap['ci'][1]:+.2f}]" if gap["ci"] else ""
    return f"{gap['mean']:+.2f}{interval} (n={gap['n']})"


def gap_row(name: str, entry: dict[str, Any] | None) -> list[str]:
    """One row of a gap table: the common gain range, the gap at each of `GAP_POSITIONS`, the verdict."""
    if entry is None:
        return [name, "none yet", "–", "–", "–", "undecided"]
    lo, hi = entry["range"]
    reach = f"{lo:.1f}–{hi:.1f}" + (" (apart)" if entry.get("apart") else "")
    return [name, reach, *(gap_cell(g) for g in entry["gaps"]), entry["verdict"]]


def reference_gaps(
    data: dict[str, Any], fronts: Sequence[Front], reference: str
) -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """Each front's forgetting minus the reference's at the low end, middle and high end of the gains both
    reach, measured seed by seed, with 95% intervals over the seeds. Returns (columns, rows, the same as JSON)."""
    ref = next((f for f in fronts if f.name == reference), None)
    columns = ["method", "common gain range %", *(f"Δ at {position}" for position in GAP_POSITIONS), "verdict"]
    rows, table = [], {}
    for front in fronts:
        if ref is None or front is ref or front.dial:
            continue
        entry = front_gaps(data, front, ref)
        rows.append(gap_row(front.name, entry))
        if entry is not None:
            table[front.name] = entry
    return columns, rows, table


def past_range(data: dict[str, Any], fronts: Sequence[Front]) -> list[str]:
    """``front rate`` of every rate with less gain *and* more forgetting than another of its front."""
    past = []
    for front in fronts:
        points = front_points(data, front, "forgetting_pct")
        on_front = efficient(points)
        past += [f"{front.name} {front.tag(rate)}" for rate, _, _ in points if all(rate != r for r, _, _ in on_front)]
    return past


def still_gaining(data: dict[str, Any], fronts: Sequence[Front]) -> list[str]:
    """Complete fronts whose largest gain is at their highest rate, with the margin over the next."""
    rising = []
    for front in (f for f in fronts if not f.dial):  # a dial's top is the trained run itself
        points = front_points(data, front, "forgetting_pct")
        top = max(points, key=lambda p: p[1], default=None)
        if len(points) == len(front.rates) and len(points) > 1 and top[0] == max(front.rates):
            below = max((p for p in points if p is not top), key=lambda p: p[1])
            rising.append(
                f"{front.name} (+{top[1] - below[1]:.2f} points of domain-loss gain over {rate_name(below[0])})"
            )
    return rising


def range_notes(data: dict[str, Any], fronts: Sequence[Front]) -> list[str]:
    """The "past its range" and "still gaining" notes, as Markdown list items."""
    lines = []
    past = past_range(data, fronts)
    if past:
        lines.append(
            "- Past the useful range (less domain gain *and* more forgetting than another rate of the same method, "
            f"so left out of the interpolation): {', '.join(past)}."
        )
    rising = still_gaining(data, fronts)
    if rising:
        lines.append(
            f"- Still gaining at the highest rate of its grid: {', '.join(rising)}. A higher rate may reach more "
            "domain gain (at more forgetting); what such a front cannot reach here was not tried, not shown impossible."
        )
    return lines


def probe_notes(data: dict[str, Any], fronts: Sequence[Front]) -> list[str]:
    """What the importance probes of Stage 2 (step 0 and refreshes) cost on top of the optimizer steps."""
    lines = []
    for front in fronts:
        probes = front_values(data, front, "reestimation_seconds")
        steps = front_values(data, front, "train_seconds")
        if any(probes) and len(probes) == len(steps):
            share = sum(probes) / sum(steps)
            lines.append(
                f"- {front.name}'s importance probes (step-0 rates and refreshes) took "
                f"{sum(probes) / len(probes):.0f} s per run on average, {share:.0%} on top of its optimizer-step "
                "time, which the time per token leaves out."
            )
    return lines


def seed_note(data: dict[str, Any], verdicts: bool = False) -> list[str]:
    """How many seeds back each point, and what that means for reading the gaps (and the ``verdicts`` drawn)."""
    counts = seed_counts(data)
    if counts and max(counts.values()) == 1:
        tail = "and the verdicts below may change with a second seed" if verdicts else "which a second seed measures"
        return [
            "- One seed so far: no error bars. Fronts that differ by a few tenths of a percent of general loss are "
            f"not shown to differ by more than training noise, {tail}."
        ]
    if not counts:
        return []
    most = max(counts.values())
    full_set = sum(n == most for n in counts.values())
    share = (
        f"all {len(counts)} rates have {most} seeds"
        if full_set == len(counts)
        else f"{full_set} of {len(counts)} rates so far have {most} seeds, the others fewer"
    )
    return [
        f"- Seeds: each point is the mean over the seeds that ran it; {share}. On the loss plot the bars span "
        "the seeds' values; the spread of a rate run twice is the scale of training noise against which the "
        "fronts' gaps are read."
    ]


# --- plots ----------------------------------------------------------------------------------


def plot_series(data: dict[str, Any], fronts: Sequence[Front]) -> list[dict[str, Any]]:
    """What ``adept.plots.plot_fronts`` draws: per front, its mean points with their seed ranges,
    its efficient values, and every run's paired benchmark changes along its loss front."""
    series = []
    for front in fronts:
        loss = front_points(data, front, "forgetting_pct")
        points = []
        for rate, gain, value in loss:
            points.append(
                {
                    "rate": front.tag(rate),
                    "gain": gain,
                    "value": value,
                    "value_range": seed_range(data, front, rate, "forgetting_pct"),
                    "gain_range": seed_range(data, front, rate, "gain_pct"),
                }
            )
        bench = []
        for rate, _, _ in loss:
            label = label_of(front, rate)
            for rows in data["seeds"].values():
                row = rows.get(label)
                general, domain = (row["general_acc_change"], row["domain_acc_change"]) if row else (None, None)
                if not general or not domain:
                    continue
                ci = general.get("ci") or [general["diff"]] * 2
                bench.append(
                    {
                        "x": 100 * domain["diff"],
                        "y": -100 * general["diff"],
                        "lo": 100 * (ci[1] - general["diff"]),
                        "hi": 100 * (general["diff"] - ci[0]),
                    }
                )
        series.append(
            {
                "name": front.name,
                "style": ":" if front.dial else "--" if front.replay_ratio else "-",
                "loss": points,
                "efficient": [v for _, _, v in efficient(loss)],
                "bench": bench,
            }
        )
    return series


def general_curves(data: dict[str, Any], fronts: Sequence[Front]) -> dict[str, tuple[list, list, bool]]:
    """The general held-out loss over steps of every run of ``fronts`` that evaluated during training,
    starting from the base model's loss at step 0; keyed ``front rate`` (plus the seed where several ran)."""
    curves = {}
    for seed, rows in data["seeds"].items():
        base = data["base"][seed]["general_loss"]
        for front in fronts:
            for rate in front.rates:
                row = rows.get(label_of(front, rate))
                if row and row["curve"]:
                    steps = [0] + [s for s, _ in row["curve"]]
                    losses = [base] + [v for _, v in row["curve"]]
                    tag = f"{front.name} {front.tag(rate)}"
                    curves[tag if len(data["seeds"]) == 1 or tag not in curves else f"{tag} (seed {seed})"] = (
                        steps,
                        losses,
                        bool(front.replay_ratio),
                    )
    return curves


# --- the sweep's report ---------------------------------------------------------------------


def anchors_of(fronts: Sequence[Front], reference: str) -> list[str]:
    """The gains the matched-gain table reads every front at: the reference's best, and each ADEPT front's."""
    return list(dict.fromkeys([reference, *(f.name for f in fronts if f.method == "adept" and not f.dial)]))


def fronts_json(
    data: dict[str, Any],
    fronts: Sequence[Front],
    reference: str,
    matched: dict[str, Any],
    gaps: dict[str, Any],
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as data: the grid, every run's row, the matched-gain table (``matched``),
    the gaps to the reference (``gaps``) and the notes; with ``settings`` (the config and overrides), a
    record another machine can continue from."""
    return {
        **artifact_header("fronts"),
        **(settings or {}),
        "grid": [
            {"name": f.name, "method": f.method, "rates": list(f.rates), "replay_ratio": f.replay_ratio} for f in fronts
        ],
        "reference": reference,
        "base": {str(seed): base for seed, base in data["base"].items()},
        "runs": {str(seed): rows for seed, rows in data["seeds"].items()},
        "fronts": {
            f.name: [
                {"rate": rate, "gain_pct": gain, "forgetting_pct": value}
                for rate, gain, value in front_points(data, f, "forgetting_pct")
            ]
            for f in fronts
        },
        "past_range": past_range(data, fronts),
        "still_gaining": still_gaining(data, fronts),
        "matched": matched,
        "against_reference": gaps,
    }


def write_fronts_report(
    data: dict[str, Any],
    fronts: Sequence[Front],
    reference: str,
    output: Path,
    meta: Sequence[str],
    settings: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """``output/fronts.json`` and ``output/report/{index.html,report.md}`` with the fronts plot."""
    report_dir = Path(output) / REPORT_DIR
    anchors = anchors_of(fronts, reference)
    columns, rows, matched = matched_table(data, fronts, anchors, reference)
    gap_columns, gap_rows, gaps = reference_gaps(data, fronts, reference)
    json_path = write_json(Path(output) / "fronts.json", fronts_json(data, fronts, reference, matched, gaps, settings))
    png = plot_fronts(plot_series(data, fronts), report_dir / "fronts.png")
    curves = plot_curves(
        general_curves(data, fronts),
        report_dir / "general_curves.png",
        ylabel="general held-out loss",
        title="General loss over training (runs that evaluated during training)",
    )
    notes = [line.removeprefix("- ").replace("*", "") for line in range_notes(data, fronts) + seed_note(data)]
    fronts_section = Section("Fronts", "fronts")
    fronts_section.blocks += [
        Text(
            "Each point is one learning rate of a method, the mean over the seeds that ran it: forgetting is the "
            "change of the general held-out loss, gain the decrease of the domain held-out loss, both in % of the "
            "base model's. Lower right is better. A method is compared with another only where their fronts reach "
            "a common gain."
        ),
        Figure(png, "Forgetting against gain: loss (left, labels: learning rate) and benchmarks (right)"),
    ]
    if curves:
        fronts_section.blocks.append(Figure(curves, "General held-out loss over training"))
    fronts_section.blocks.append(Items(notes) if notes else Text("No notes: every front is on its range."))
    matched_section = Section("Matched gain", "matched")
    matched_section.blocks += [
        Text(
            f"Each front interpolated linearly between its efficient rates (never extrapolated) at the best gain of "
            f"{', '.join(anchors)}; ≤ marks a gain below the front's smallest, where the value is that rate's. Time "
            f"per token (each front's fastest run, optimizer steps only) and peak memory (mean over its runs) are "
            f"relative to {reference}."
        ),
        Table(columns, rows),
    ]
    gaps_section = Section("Against the reference, seed by seed", "against-reference")
    gaps_section.blocks += [
        Text(
            f"Each front's general-loss change minus {reference}'s, in points of %, at the low end, middle and "
            "high end of the domain gains both reach: each seed's own fronts are interpolated there, and the "
            "interval is the 95% t-interval of the mean over the seeds. A gap whose interval holds 0 is no "
            "difference beyond seed noise. Fronts marked apart share no gain: they are read over the lower front's "
            "gains, the higher one at its smallest-gain point (it gives more gain at that cost)."
        ),
        Table(gap_columns, gap_rows) if gap_rows else Text("No other front to compare yet."),
    ]
    runs_section = Section("Every run", "runs", [Table(GRID_COLUMNS, grid_rows(data, fronts))])
    sections = [fronts_section, matched_section, gaps_section, runs_section]
    title = "ADEPT sweep: forgetting-versus-gain fronts"
    html = write_text(report_dir / HTML_NAME, render("report.html.j2", title, meta, sections))
    markdown = write_text(report_dir / MARKDOWN_NAME, render("report.md.j2", title, meta, sections).rstrip("\n") + "\n")
    return {"html": html, "markdown": markdown, "json": json_path, "plot": png}
