"""E4, the forgetting dial: does moving a run back towards its start change which method forgets least?
The page of `adept sweep configs/e4_smollm2.yaml`.

Full CPT, LLaMA-Pro and ADEPT over their rate grids, three seeds; once a front is complete, its best-gain
rate's run of every seed is moved back towards where it started (`adept interpolate`) at alpha 0.25, 0.5
and 0.75 and evaluated. A method then offers its rates *and* its dial: read as one front (`union_points`),
they are the trade-offs a user can reach. This script reads what is done (the run directories, or the
committed ``docs/results_dial_fronts.json`` record) and writes ``docs/results_dial.md``: the verdict first
(ADEPT against full CPT with its dial, the issue's question; each method with its dial against full CPT
with its dial; ADEPT against LLaMA-Pro, the paper's comparison; each method's dial against its own lower
rates), then the gaps seed by seed, on the probe's source and on Austen (a source neither probed nor
trained on; each finished model evaluated once and kept in ``docs/results_dial_heldout.json``), the dials'
points, and every point.

Usage: python benchmarks/forgetting_dial.py [--config configs/e4_smollm2.yaml] [--docs docs/results_dial.md]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from adept.artifacts import read_json, write_json, write_text
from adept.config import load_config
from adept.fronts import Front, best_rate, dial_front, dial_points_done, front_named
from adept.fronts_report import GRID_COLUMNS, grid_rows, markdown_table
from adept.sweep import points, reference_front, sweep_fronts, sweep_root

from sweep_pages import (
    SECOND_HELDOUT,
    SECOND_MAX_BLOCKS,
    gap_tables,
    mean_table,
    middle_answer,
    read_sweep,
    second_source_losses,
    second_source_view,
)

Side = Front | tuple[Front, ...]


def dials_of(data: dict[str, Any], fronts: list[Front], alphas: list[float]) -> dict[str, Front]:
    """Each front's dial: its best-gain rate's run moved back, as the sweep dials it once the front is complete."""
    dials = {}
    for front in fronts:
        best = best_rate(data, front)
        if best is not None:
            dials[front.name] = dial_front(front, best[0], alphas)
    return dials


def questions(fronts: list[Front], dials: dict[str, Front], reference: str) -> list[tuple[str, Side, Side]]:
    """(question, side a, side b): a's forgetting minus b's is what each row reads."""
    ref = front_named(fronts, reference)

    def with_dial(front: Front) -> Side:
        return (front, dials[front.name]) if front.name in dials else front

    others = sorted(
        (f for f in fronts if f is not ref), key=lambda f: f.method != "adept"
    )  # the question first
    rows = []
    for front in others:
        rows.append((f"{front.name} against {ref.name} with its dial", front, with_dial(ref)))
    for front in others:
        rows.append((f"{front.name} with its dial against {ref.name} with its dial", with_dial(front), with_dial(ref)))
    for front in others:
        rows.append((f"{front.name} against {ref.name}, rates only (the fronts without dials)", front, ref))
    # ADEPT against the other expansion methods (the paper's own comparison), with and without the dials.
    for front in (f for f in others if f.method == "adept"):
        for other in (f for f in others if f.method != "adept"):
            rows.append((f"{front.name} against {other.name}, rates only", front, other))
            rows.append(
                (f"{front.name} with its dial against {other.name} with its dial", with_dial(front), with_dial(other))
            )
    for front in fronts:
        if front.name in dials:
            rows.append((f"{front.name}: its dial against its own rates", dials[front.name], front))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/e4_smollm2.yaml")
    parser.add_argument("--docs", default="docs/results_dial.md")
    parser.add_argument("--second-heldout", default=SECOND_HELDOUT, help="General text of a source never probed")
    parser.add_argument("--second-max-blocks", type=int, default=SECOND_MAX_BLOCKS)
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    fronts = sweep_fronts(cfg, args.config)
    root = sweep_root(cfg)
    docs = Path(args.docs)
    record = docs.with_name(f"{docs.stem}_fronts.json")
    front, data, paths = read_sweep(args.config, read_json(record) if record.is_file() else None)
    write_json(record, front)
    shutil.copy2(paths["plot"], docs.with_name(f"{docs.stem}_fronts.png"))
    dials = dials_of(data, fronts, list(cfg.sweep.alphas))
    asked = questions(fronts, dials, reference_front(cfg, fronts))
    gap_rows, gaps = gap_tables(data, asked)
    second = second_source_losses(
        cfg, root, data, docs.with_name(f"{docs.stem}_heldout.json"), args.second_heldout, args.second_max_blocks
    )
    second_rows, second_gaps = gap_tables(second_source_view(data, second["losses"]), asked)
    dialled = [d for d in dials.values() if dial_points_done(data, d)]
    dial_points = sum(len(dial_points_done(data, d)) for d in dials.values())
    trained = sum(len(rows) for rows in data["seeds"].values()) - dial_points
    total = len(points(fronts, cfg.sweep.seeds))
    seconds = sum(r.get("run_seconds") or 0 for rows in data["seeds"].values() for r in rows.values())
    train_args = cfg.method_settings(fronts[0].name).training_args
    tokens = int(train_args["max_steps"]) * int(train_args["per_device_train_batch_size"]) * cfg.data.block_size
    status = f"**Status: {trained} of {total} trained points and {dial_points} of "
    status += f"{len(fronts) * len(cfg.sweep.seeds) * len(cfg.sweep.alphas)} dial points done.**"
    if dial_points < len(fronts) * len(cfg.sweep.seeds) * len(cfg.sweep.alphas):
        status += " Verdicts from an incomplete grid are provisional; undecided rows wait for more points."
    position_columns = ["question", "common gain range %", "Δ at low end", "Δ at middle", "Δ at high end", "verdict"]
    text = [
        "# Does the forgetting dial change the verdict? (E4, SmolLM2-135M)",
        "",
        "Is ADEPT's front below full CPT's once full CPT may also be moved back towards its start (`adept "
        "interpolate`)? General-loss change of the first side minus the second's, in points of %, at the middle of "
        "the domain gains both reach, with its 95% t-interval over seeds; negative: the first side forgets less.",
        "",
        *markdown_table(
            [
                "question",
                "on State of the Union (the probe's source)",
                "on Austen (a source neither probed nor trained on)",
            ],
            [[q, middle_answer(gaps, q), middle_answer(second_gaps, q)] for q, _, _ in asked],
            "lll",
        ),
        "",
        status,
        "",
        f"Regenerate: `adept sweep {args.config}` (trains and dials what is missing, resumable), then "
        f"`python benchmarks/forgetting_dial.py`. CPU time of the trained points: {seconds / 3600:.1f} hours on 2 "
        f"cores (E1's ADEPT points included; the dials are evaluation only). Each trained point: {tokens:,.0f} "
        "domain tokens on SmolLM2-135M-Instruct, the settings of `configs/fronts_smollm2.yaml`; the probe is drawn "
        "with each seed. A method *with its dial* is its rates and its dial's points read as one front.",
        "",
        "## Seed by seed",
        "",
        "The gap at the low end, middle and high end of the domain gains both sides reach; each seed's own fronts "
        "interpolated, the interval a 95% t-interval over seeds. A gap whose interval holds 0 is no difference. A "
        "dial against its own rates meets them at its top (alpha 1 is the run itself), so its high end is 0 by "
        "construction and its verdict is read at the middle. Fronts marked *apart* share no gain (one's smallest "
        "gain lies above the other's largest): they are read over the lower front's gains, the higher one at its "
        "smallest-gain point, where it gives more gain at that cost.",
        "",
        *markdown_table(position_columns, gap_rows, "lrrrrl"),
        "",
        "## The same on text of another source",
        "",
        f"General-loss change on `{args.second_heldout}` (Austen; the first {args.second_max_blocks} blocks, "
        f"base loss {second['losses'].get('base', float('nan')):.3f}); read as above.",
        "",
        *markdown_table(position_columns, second_rows, "lrrrrl"),
        "",
        "## The dials",
        "",
        "Each front's best-gain rate's run moved back by alpha (1 is the run itself): means over seeds.",
        "",
        *mean_table(data, dialled, first="dial"),
        "",
        f"![fronts]({docs.stem}_fronts.png)",
        "",
        "## Means over seeds, rate by rate",
        "",
        *mean_table(data, fronts, first="method"),
        "",
        "## Every point",
        "",
        *markdown_table(GRID_COLUMNS, grid_rows(data, [*fronts, *dialled]), "l" + "r" * (len(GRID_COLUMNS) - 1)),
        "",
    ]
    write_text(docs, "\n".join(text))
    print(f"written: {docs}, {record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
