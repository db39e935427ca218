"""E1, does Stage 2's allocation carry information? The page of `adept sweep configs/e1_smollm2.yaml`.

Four ADEPT rules (the paper's; the paper's rescaled to a parameter-weighted mean multiplier of 1;
the paper's multipliers shuffled across units at every refresh; ranks instead of min-max, rescaled
to a mean of 1) against ADEPT's copies at one rate (adept-no-stage2), each over a rate grid, three
seeds, the importance probe drawn with each seed. The sweep trains (resumable point by point, in
the background: ``adept sweep configs/e1_smollm2.yaml``); this script reads what is done (the run
directories, or the committed ``docs/results_stage2_fronts.json`` record) and writes
``docs/results_stage2.md``: the verdict first, then each rule against adept-no-stage2 seed by seed,
the multipliers each rule gave the copies' units, and every point. Forgetting is also measured on
general text of a source the probe and the training never saw (Austen, ``--second-heldout``), each
finished point's model evaluated once and kept in ``docs/results_stage2_heldout.json``.

Usage: python benchmarks/stage2_allocation.py [--config configs/e1_smollm2.yaml] [--docs docs/results_stage2.md]
                                              [--second-heldout data/demo/general/heldout.jsonl]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from adept.artifacts import read_json, write_json, write_text
from adept.config import load_config
from adept.fronts import label_of
from adept.fronts_report import GRID_COLUMNS, grid_rows, markdown_table, reference_gaps
from adept.results import SUMMARY_NAME
from adept.run_directory import train_dir
from adept.sweep import points, reference_front, sweep_fronts, sweep_root

from sweep_pages import (
    SECOND_HELDOUT,
    SECOND_MAX_BLOCKS,
    mean_table,
    middle_answer,
    read_sweep,
    second_source_losses,
    second_source_view,
)

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "adept-no-stage2"
DEFAULT_CONFIG = "configs/e1_smollm2.yaml"
MODEL_NAMES = {"smollm2-135m": "SmolLM2-135M-Instruct", "gemma3-270m": "Gemma-3-270M"}  # models/real/<name>
MATRICES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def distributions(root: Path, fronts, seeds) -> dict[str, dict[str, Any]]:
    """Per finished point with per-unit rates: the multipliers at step 0 and at the last refresh."""
    out = {}
    for seed in seeds:
        for front in fronts:
            for rate in front.rates:
                path = train_dir(root / f"seed{seed}", label_of(front, rate)) / SUMMARY_NAME
                summary = read_json(path, kind="training") if path.is_file() else {}
                if summary.get("multiplier_distribution"):
                    out[f"{seed}:{label_of(front, rate)}"] = summary["multiplier_distribution"]
    return out


def _span(by_type: dict[str, Any], kinds: tuple[str, ...]) -> tuple[float, float]:
    entries = [e for name, e in by_type.items() if any(k in name for k in kinds)]
    return min(e["min"] for e in entries), max(e["max"] for e in entries)


def distribution_table(dists: dict[str, dict[str, Any]], fronts) -> list[str]:
    """Per rule: the range over its points of each summary of the multipliers, at step 0 and the last refresh."""
    rows = []
    for front in fronts:
        mine = [d for key, d in dists.items() if key.split(":", 1)[1].split("@")[0] == front.name]
        if not mine:
            continue
        cells = [front.name, str(len(mine))]
        for when in ("first", "last"):
            parts = [d[when] for d in mine if d.get(when)]
            pm = [p["parameter_mean"] for p in parts]
            um = [p["unit_mean"] for p in parts]
            mat = [_span(p["by_type"], MATRICES) for p in parts]
            norms = [_span(p["by_type"], ("norm",)) for p in parts]
            cells += [
                f"{min(pm):.3f}–{max(pm):.3f}",
                f"{min(um):.2f}–{max(um):.2f}",
                f"{min(lo for lo, _ in mat):.2f}–{max(hi for _, hi in mat):.2f}",
                f"{min(lo for lo, _ in norms):.2f}–{max(hi for _, hi in norms):.2f}",
            ]
        rows.append(cells)
    columns = ["rule", "runs"]
    for when in ("step 0", "last refresh"):
        columns += [f"param-weighted mean, {when}", "unit mean", "matrices", "norms"]
    return markdown_table(columns, rows, "l" + "r" * (len(columns) - 1))


def verdict_rows(gaps: dict[str, Any], second: dict[str, Any], rules: list[str], done: int, total: int) -> list[str]:
    """The page's conclusion: per rule, its gap to adept-no-stage2 at the middle of the common gains, on the
    probe's source and on the second source."""
    lines = markdown_table(
        [
            "rule",
            "on State of the Union (the probe's source)",
            "on Austen (a source neither probed nor trained on)",
        ],
        [[rule, middle_answer(gaps, rule), middle_answer(second, rule)] for rule in rules],
        "lll",
    )
    status = f"**Status: {done} of {total} points done.**"
    if done < total:
        status += " Verdicts from an incomplete grid are provisional; undecided rows wait for more rates."
    return [
        "Does the rule forget less than uniform rates on the same copies (adept-no-stage2), at matched gain? "
        "General-loss change minus adept-no-stage2's, in points of %, at the middle of the domain gains both "
        "fronts reach, with its 95% t-interval over seeds:",
        "",
        *lines,
        "",
        status,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--docs", default="docs/results_stage2.md")
    parser.add_argument("--second-heldout", default=SECOND_HELDOUT, help="General text of a source never probed")
    parser.add_argument("--second-max-blocks", type=int, default=SECOND_MAX_BLOCKS)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    fronts = sweep_fronts(cfg, args.config)
    root = sweep_root(cfg)
    docs = Path(args.docs)
    record = docs.with_name(f"{docs.stem}_fronts.json")
    front, data, paths = read_sweep(args.config, read_json(record) if record.is_file() else None)
    dists = distributions(root, fronts, cfg.sweep.seeds) or front.get("distributions", {})
    front["distributions"] = dists
    write_json(record, front)
    shutil.copy2(paths["plot"], docs.with_name(f"{docs.stem}_fronts.png"))
    _, gap_rows, gaps = reference_gaps(data, fronts, reference_front(cfg, fronts))
    second = second_source_losses(
        cfg, root, data, docs.with_name(f"{docs.stem}_heldout.json"), args.second_heldout, args.second_max_blocks
    )
    second_view = second_source_view(data, second["losses"])
    _, second_rows, second_gaps = reference_gaps(second_view, fronts, reference_front(cfg, fronts))
    done = sum(len(rows) for rows in data["seeds"].values())
    total = len(points(fronts, cfg.sweep.seeds))
    seconds = sum(r.get("run_seconds") or 0 for rows in data["seeds"].values() for r in rows.values())
    train_args = cfg.method_settings(fronts[0].name).training_args
    tokens = int(train_args["max_steps"]) * int(train_args["per_device_train_batch_size"]) * cfg.data.block_size
    model = MODEL_NAMES.get(Path(cfg.model).name, Path(cfg.model).name)
    page_args = [] if args.config == DEFAULT_CONFIG else ["--config", args.config, "--docs", args.docs]
    text = [
        f"# What does Stage 2 add? (E1, {model})",
        "",
        *verdict_rows(gaps, second_gaps, [row[0] for row in gap_rows], done, total),
        "",
        f"Regenerate: `adept sweep {args.config}` (trains what is missing, resumable), then "
        f"`{' '.join(['python benchmarks/stage2_allocation.py', *page_args])}`. CPU time so far: "
        f"{seconds / 3600:.1f} hours on 2 cores (one thread while other work ran). Each point: {tokens:,.0f} "
        f"domain tokens on {model}, the settings of `{args.config}`; the probe is drawn with each seed.",
        "",
        "## Each rule against adept-no-stage2, seed by seed",
        "",
        "General-loss change minus adept-no-stage2's, in points of %, at the low end, middle and high end of the "
        "domain gains both fronts reach; each seed's own fronts interpolated, the interval a 95% t-interval over "
        "seeds. A gap whose interval holds 0 is no difference.",
        "",
        *markdown_table(
            ["rule", "common gain range %", "Δ at low end", "Δ at middle", "Δ at high end", "verdict"],
            gap_rows,
            "lrrrrl",
        ),
        "",
        "## The same on text of another source",
        "",
        f"General-loss change on `{args.second_heldout}` (Austen; the first {args.second_max_blocks} blocks, "
        f"base loss {second['losses'].get('base', float('nan')):.3f}), a source neither the probe (State of the Union) "
        "nor training saw, minus adept-no-stage2's; read as above.",
        "",
        *markdown_table(
            ["rule", "common gain range %", "Δ at low end", "Δ at middle", "Δ at high end", "verdict"],
            second_rows,
            "lrrrrl",
        ),
        "",
        "## Means over seeds, rate by rate",
        "",
        "Read across a row of one rate with care: at one rate the rules differ in their effective rate too "
        "(the paper's about x2, the budget-neutral ones x1), which is why the verdict is read off the fronts.",
        "",
        *mean_table(data, fronts),
        "",
        "## The multipliers each rule gave the copies' units",
        "",
        "Ranges over the rule's finished training runs (every rate and seed). A parameter-weighted mean near 2 "
        "makes a rule a x2 learning rate: on SmolLM2-135M the paper's rule leaves every matrix near its scale of 2 "
        "and slows only the norms.",
        "",
        *distribution_table(dists, fronts),
        "",
        f"![fronts]({docs.stem}_fronts.png)",
        "",
        "## Every point",
        "",
        *markdown_table(GRID_COLUMNS, grid_rows(data, fronts), "l" + "r" * (len(GRID_COLUMNS) - 1)),
        "",
    ]
    write_text(docs, "\n".join(text))
    print(f"written: {docs}, {record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
