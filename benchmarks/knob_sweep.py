"""One-at-a-time sweep of ADEPT's knobs on the embedded default, written into docs/results.md.

Each row changes one setting of `configs/demo.yaml` (ADEPT alone, seed 0, the demo's 100-step
budget) and reports forgetting (general held-out loss change) and gain (domain held-out loss
change) against the base model. Runs live in ``runs/sweep/<name>`` and are resumable: a
finished row is read back, not retrained. The table replaces everything after the
``<!-- knob-sweep -->`` marker of the results file.

Usage: python benchmarks/knob_sweep.py [--only name,name] [--docs docs/results.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

MARKER = "<!-- knob-sweep -->"
COMMON = ["evaluation.limit=100", "evaluation.shift=false", "train.training_args.save_steps=1000"]
# name, method, overrides, what changes
SWEEP = [
    (
        "reference",
        "adept",
        [],
        "reference: base lr 3e-4, 2 copies (masking), 10 refreshes (every 10 steps), m = 2(1 - I), min-max, unit mean",
    ),
    ("no-stage2", "adept-no-stage2", [], "no Stage 2: the same copies at a uniform rate"),
    (
        "unit-sum",
        "adept",
        ["train.rule.unit_score=sum"],
        "unit score summed over the tensor instead of the per-element mean",
    ),
    ("reest25", "adept", ["train.reestimate_every=25"], "re-estimate every 25 steps (4 refreshes)"),
    ("lr1e-3", "adept", ["train.training_args.learning_rate=1e-3"], "base lr 1e-3"),
    ("lr3e-3", "adept", ["train.training_args.learning_rate=3e-3"], "base lr 3e-3"),
    ("layers4", "adept", ["expansion.num_new_layers=4"], "4 copies instead of 2"),
    ("rank", "adept", ["train.rule.normalization=rank"], "rank normalisation instead of min-max"),
    ("inverse", "adept", ["train.rule.rule=inverse"], "rule m = 2 / (1 + I) instead of 2(1 - I)"),
    ("metric-gradw", "adept", ["expansion.metric=grad_weight"], "choose layers by grad x weight instead of masking"),
]


def run_row(config: str, name: str, method: str, overrides: list[str]) -> dict:
    from adept.config import load_config
    from adept.evaluation import SUMMARY_NAME
    from adept.pipeline import comparison_path, expanded_dir, run_pipeline, train_dir
    from adept.stage2 import read_rate_log
    from adept.training import RATES_LOG

    run_dir = Path("runs/sweep") / name
    cfg = load_config(config, [*COMMON, *overrides, f"train.methods=[{method}]", f"run_dir={run_dir}"])
    run_pipeline(cfg)
    results = json.loads(comparison_path(run_dir).read_text())
    row = next(r for r in results["comparison"] if r["label"] == method)
    summary = json.loads((train_dir(run_dir, method) / SUMMARY_NAME).read_text())
    layers = json.loads((expanded_dir(run_dir, "adept") / "expansion.json").read_text())["inserted_layers"]
    rates = train_dir(run_dir, method) / RATES_LOG
    means = (
        [statistics.fmean(entry["multipliers"].values()) for entry in read_rate_log(rates)]
        if rates.is_file()
        else [1.0]
    )
    return {
        **row,
        "copies_of": [layer["source_layer_idx"] for layer in layers],
        "train_wall": summary["wall_seconds"],
        "mean_multiplier": statistics.fmean(means),
    }


def render(rows: list[tuple[str, str, dict]]) -> str:
    lines = [
        MARKER,
        "",
        "## Knob sweep",
        "",
        "One setting changed at a time from the reference (ADEPT on `configs/demo.yaml`, seed 0, 100 steps x 8 x 256",
        "domain tokens, benchmarks limited to 100 questions). *Ratio* is forgetting per unit of gain: general",
        "loss increase / domain loss decrease (lower is better). Regenerate with `python benchmarks/knob_sweep.py`.",
        "",
        "| setting | copies of | mean multiplier | general loss Δ% | domain loss Δ% | ratio | general acc Δ | domain "
        "acc Δ | trainable |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for _, what, row in rows:
        ratio = (
            row["general_loss_change"] / -row["domain_loss_change"] if row["domain_loss_change"] < 0 else float("nan")
        )
        lines.append(
            f"| {what} | {row['copies_of']} | {row['mean_multiplier']:.2f} | {row['general_loss_change_pct']:+.2f} | "
            f"{row['domain_loss_change_pct']:+.2f} | "
            f"{ratio:.2f} | {row['general_acc_change']:+.3f} | {row['domain_acc_change']:+.3f} | "
            f"{row['trainable_share']:.1%} |"
        )
    ratios = {
        name: row["general_loss_change"] / -row["domain_loss_change"]
        for name, _, row in rows
        if row["domain_loss_change"] < 0
    }
    if "reference" in ratios:
        best = min(ratios, key=ratios.get)
        what = {name: w for name, w, _ in rows}
        lr = ", ".join(
            f"{label} {ratios[name]:.2f}"
            for name, label in (("reference", "3e-4"), ("lr1e-3", "1e-3"), ("lr3e-3", "3e-3"))
            if name in ratios
        )
        lines += [
            "",
            f"Reference ratio {ratios['reference']:.2f}; best: {what[best].split(':')[0]} ({ratios[best]:.2f}). Each "
            "row is one",
            "seed, so a better row is a candidate to confirm over seeds (`benchmarks/compare_methods.py --set ...`), "
            "not yet a",
            f"new default. Ratio by base learning rate: {lr}. The reference follows the library's defaults: the "
            "per-element",
            "unit score, step-0 rates from the source layers and ten refreshes per run come from the paper's "
            "definition",
            "(docs/method.md), not from this sweep; the `unit-sum` and `reest25` rows show the settings they replaced.",
            "*Mean multiplier* is the average learning-rate multiplier over units and refreshes (1 for uniform "
            "rates): at one",
            "base rate, a row with a higher mean trains partly as if at a higher rate, so rows that differ in it are "
            "not",
            "compared at matched gain here.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--only", default=None, help="comma-separated row names to run")
    parser.add_argument("--docs", type=Path, default=Path("docs/results.md"))
    parser.add_argument(
        "--write", action="store_true", help="write the docs also with --only (the section lists those rows)"
    )
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    rows = []
    for name, method, overrides, what in SWEEP:
        if only is None or name in only:
            rows.append((name, what, run_row(args.config, name, method, overrides)))
    section = render(rows)
    print(section)
    if only is None or args.write:
        text = args.docs.read_text() if args.docs.is_file() else ""
        head = text.split(MARKER)[0].rstrip("\n")
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text((head + "\n\n" if head else "") + section)
        print(f"written to {args.docs}")


if __name__ == "__main__":
    main()
