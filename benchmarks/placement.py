"""E2, does importance-guided placement help? The page of the three sweeps of `configs/e2_smollm2.yaml`.

ADEPT (the paper's rule) and its copies at uniform rates (adept-no-stage2), with the four copies at
Stage 1's masking choice (drawn with each seed's probe), at LLaMA-Pro's uniform positions, and at the
deepest layers (where the paper's models put theirs); three seeds, 4x the fronts' domain tokens. Each
placement is one sweep of the config with its overrides (``PLACEMENTS``) in its own run directory.
With ``--train`` this script runs the three sweeps round by round, two points of each at a time
(resumable point by point); it then reads each one's record and writes ``docs/results_placement.md``:
the verdict first (each placement against the masking choice, and Stage 2 on against off at each
placement, gaps seed by seed), then the highest gain each front reaches, the layers each seed's
masking chose, and every point. The records are kept in
``docs/results_placement_fronts.json``, so the page regenerates on a machine without the run directories.

Usage: python benchmarks/placement.py [--train] [--config configs/e2_smollm2.yaml] [--docs docs/results_placement.md]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from adept.artifacts import read_json, write_json, write_text
from adept.config import load_config
from adept.fronts import Front, front_named, front_points, is_done, label_of, seed_range
from adept.fronts_report import GRID_COLUMNS, grid_rows, markdown_table, plot_series
from adept.plots import plot_fronts
from adept.sweep import points, run_sweep, sweep_fronts, sweep_root

from sweep_pages import gap_tables, mean_table, middle_answer, read_sweep

# Placement -> its overrides of the config: the masking choice is the config's own expansion.
# The fixed placements score units only: Stage 2's step-0 rates read the unit grad x weight scores of the
# same probe sample, and layer masking (most of Stage 1's time) would only choose layers they fix.
FIXED = ["expansion.num_new_layers=null", "importance.metrics=[grad_weight]"]
PLACEMENTS = {
    "masking": [],
    "uniform": [*FIXED, "expansion.layers=[6,14,21,29]", "run_dir=runs/e2/uniform"],
    "deep": [*FIXED, "expansion.layers=[26,27,28,29]", "run_dir=runs/e2/deep"],
}
REFERENCE = "masking"
ROUND = 2  # points per placement per round of --train: both arms of one seed at one rate
ARMS = ("adept", "adept-no-stage2")


def points_left(config: str, overrides: list[str]) -> int:
    """How many of the placement's points are not finished yet."""
    cfg = load_config(config, overrides)
    todo = points(sweep_fronts(cfg), cfg.sweep.seeds)
    return sum(not is_done(sweep_root(cfg) / f"seed{seed}", label_of(front, rate)) for seed, front, rate in todo)


def read_placement(config: str, overrides: list[str], saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """One placement's record and the layers its masking chose per seed (the committed copy ``saved``
    seeded first); None before its first point."""
    try:
        record, _, _ = read_sweep(config, saved and saved["record"], overrides)
    except FileNotFoundError:
        return None
    cfg = load_config(config, overrides)
    layers = dict(saved.get("layers", {})) if saved else {}
    for seed in cfg.sweep.seeds:
        expansion = sweep_root(cfg) / f"seed{seed}" / "expanded" / "adept" / "expansion.json"
        if expansion.is_file():
            layers[str(seed)] = read_json(expansion)["source_layers"]
    return {"record": record, "layers": layers}


def merged(placements: dict[str, dict[str, Any]], cfg) -> tuple[dict[str, Any], list[Front]]:
    """Every placement's rows in one data set, each label prefixed with its placement, and their fronts."""
    data: dict[str, Any] = {"seeds": {}, "base": {}}
    fronts = []
    for name, placement in placements.items():
        record = placement["record"]
        for seed, rows in record["runs"].items():
            data["seeds"].setdefault(int(seed), {}).update({f"{name} {label}": row for label, row in rows.items()})
            data["base"][int(seed)] = record["base"][seed]
        fronts += [Front(f"{name} {f.name}", f.method, f.rates) for f in sweep_fronts(cfg)]
    return data, fronts


def questions(fronts: list[Front], names: list[str]) -> list[tuple[str, Front, Front]]:
    """(question, a, b): each other placement against the masking choice per arm, then Stage 2 on against off."""
    have = {f.name for f in fronts}
    asked = []
    for arm in ARMS:
        for name in (n for n in names if n != REFERENCE):
            a, b = f"{name} {arm}", f"{REFERENCE} {arm}"
            if a in have and b in have:
                asked.append((f"{arm}: {name} against {REFERENCE}", front_named(fronts, a), front_named(fronts, b)))
    for name in names:
        a, b = f"{name} {ARMS[0]}", f"{name} {ARMS[1]}"
        if a in have and b in have:
            asked.append((f"{name}: Stage 2 on against off", front_named(fronts, a), front_named(fronts, b)))
    return asked


def top_gains(data: dict[str, Any], fronts: list[Front]) -> list[list[str]]:
    """Per front, the largest mean domain gain over its rates (where its front stops), with that rate's seed range."""
    rows = []
    for front in fronts:
        loss = front_points(data, front, "forgetting_pct")
        if not loss:
            continue
        rate, gain, forgetting = max(loss, key=lambda p: p[1])
        spread = seed_range(data, front, rate, "gain_pct")
        cells = [front.name, front.tag(rate), f"{gain:.1f}", f"{spread[0]:.1f} to {spread[1]:.1f}" if spread else "–"]
        rows.append([*cells, f"{forgetting:+.2f}"])
    return markdown_table(["front", "rate", "top gain %", "seeds' range", "general-loss change % there"], rows, "llrrr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/e2_smollm2.yaml")
    parser.add_argument("--docs", default="docs/results_placement.md")
    parser.add_argument("--train", action="store_true", help="Run the three sweeps first (resumable)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    docs = Path(args.docs)
    record_path = docs.with_name(f"{docs.stem}_fronts.json")
    saved = read_json(record_path) if record_path.is_file() else {}
    if args.train:  # round by round, so a stopped run has every placement at the same points
        while todo := [o for o in PLACEMENTS.values() if points_left(args.config, o)]:
            for overrides in todo:
                run_sweep(args.config, overrides, max_runs=ROUND)
    placements = {}
    for name, overrides in PLACEMENTS.items():
        placement = read_placement(args.config, overrides, saved.get(name))
        if placement is not None:
            placements[name] = placement
    if not placements:
        print(f"error: no placement of {args.config} has a finished point yet: run this with --train", file=sys.stderr)
        return 1
    write_json(record_path, placements)
    data, fronts = merged(placements, cfg)
    asked = questions(fronts, list(placements))
    rows, gaps = gap_tables(data, asked)
    plot = plot_fronts(plot_series(data, fronts), docs.with_name(f"{docs.stem}_fronts.png"))
    done = sum(len(rows_) for rows_ in data["seeds"].values())
    total = len(points(sweep_fronts(cfg), cfg.sweep.seeds)) * len(PLACEMENTS)
    seconds = sum(r.get("run_seconds") or 0 for rows_ in data["seeds"].values() for r in rows_.values())
    train_args = cfg.method_settings(ARMS[0]).training_args
    tokens = int(train_args["max_steps"]) * int(train_args["per_device_train_batch_size"]) * cfg.data.block_size
    status = f"**Status: {done} of {total} points done.**"
    if done < total:
        status += " Verdicts from an incomplete grid are provisional; undecided rows wait for more points."
    layer_rows = [
        [f"seed {seed}", ", ".join(map(str, layers))]
        for seed, layers in sorted(placements.get(REFERENCE, {}).get("layers", {}).items())
    ]
    commands = [shlex.join(["adept", "sweep", args.config, *overrides]) for overrides in PLACEMENTS.values()]
    text = [
        "# Does importance-guided placement help? (E2, SmolLM2-135M)",
        "",
        "Does a placement of the four copies forget less than Stage 1's masking choice at matched gain, and does "
        "Stage 2 forget less than uniform rates at each placement? General-loss change of the first minus the "
        "second, in points of %, at the middle of the domain gains both reach, with its 95% t-interval over seeds; "
        "negative: the first forgets less.",
        "",
        *markdown_table(
            ["question", "gap at the middle of the common gains"],
            [[q, middle_answer(gaps, q)] for q, _, _ in asked],
            "ll",
        ),
        "",
        status,
        "",
        "Regenerate: `python benchmarks/placement.py --train` (the three sweeps round by round, resumable, then "
        f"this page), or each sweep alone: {'; '.join(f'`{c}`' for c in commands)}. CPU time so far: "
        f"{seconds / 3600:.1f} hours on 2 cores. Each point: {tokens:,.0f} domain tokens (4x the fronts') on "
        "SmolLM2-135M-Instruct; the probe is drawn with each seed. Copies at LLaMA-Pro's uniform positions "
        "follow layers 6, 14, 21 and 29 of 30; the deepest ones 26-29. Loss only: the verdicts are loss gaps, "
        "and 100-item benchmark subsets (about ±2.75 points) cannot separate placements; the full benchmark "
        "sets are in [results_final.md](results_final.md).",
        "",
        "## Seed by seed",
        "",
        "The gap at the low end, middle and high end of the domain gains both fronts reach; each seed's own fronts "
        "interpolated, the interval a 95% t-interval over seeds. A gap whose interval holds 0 is no difference.",
        "",
        *markdown_table(
            ["question", "common gain range %", "Δ at low end", "Δ at middle", "Δ at high end", "verdict"],
            rows,
            "lrrrrl",
        ),
        "",
        "## Where each front stops",
        "",
        "The largest mean domain gain over each front's rates: at 16x the fronts' tokens the expansion methods' "
        "gains stopped at a level of their own (`docs/results_budget_x16.md`).",
        "",
        *top_gains(data, fronts),
        "",
        f"![fronts]({plot.name})",
        "",
        "## The layers the masking choice copied",
        "",
        *markdown_table(["probe sample", "source layers of the copies (of 0-29)"], layer_rows, "ll"),
        "",
        "## Means over seeds, rate by rate",
        "",
        *mean_table(data, fronts, first="front"),
        "",
        "## Every point",
        "",
        *markdown_table(GRID_COLUMNS, grid_rows(data, fronts), "l" + "r" * (len(GRID_COLUMNS) - 1)),
        "",
    ]
    write_text(docs, "\n".join(text))
    print(f"written: {docs}, {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
