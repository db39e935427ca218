"""Forgetting-versus-gain fronts on a real model: every method at several learning rates.

One front per method: the method trained at each learning rate of its own grid (``GRID``), on the
same domain-token budget, then evaluated on general held-out text and general benchmarks
(forgetting) and on domain held-out text and the domain benchmark (gain). Each (method, rate)
label is one `adept run` of the config with the label added as a ``train.variants`` entry, run
in-process into one run directory per seed; importance, expansion and the base model's
evaluation are shared, and every finished label is skipped, so the grid can be stopped at any
point and completed over several sittings (``--max-runs`` bounds one sitting). Finished labels are
also kept in the page's JSON (``<docs>_fronts.json``, committed with the page): on a machine without
their run directories they count as done and are reported from there, once the config, overrides
and budget are checked to be the same; before a new label trains, the base model is evaluated here
and checked against the recorded evaluation too.

Then the real-model section of ``docs/results.md`` (between its ``fronts`` markers) is rewritten
from whatever labels are done: the fronts plot, full CPT's general loss over steps, the
matched-gain table and the targets, each reported as met or missed with its numbers.

Usage:
  python benchmarks/fronts.py [--config configs/fronts_smollm2.yaml] [--seeds 0] [--max-runs N]
  python benchmarks/fronts.py --report-only        # docs from the labels done so far
  python benchmarks/fronts.py --list               # the grid, in run order, with what is done
  python benchmarks/fronts.py --labels full@3e-4,adept@3e-3 --output-root runs/fronts/smollm2-x4 \
      --set train.training_args.max_steps=128 --docs docs/results_budget.md   # a few labels at another budget
"""

from __future__ import annotations

import argparse
import logging
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from adept.artifacts import artifact_header, read_json, write_json, write_text
from adept.config import PipelineConfig, load_config
from adept.fronts import (
    Front,
    at_gain,
    base_summary,
    best_rate,
    compare_fronts,
    efficient,
    front_points,
    interpolate,
    is_done,
    label_of,
    rate_name,
)
from adept.fronts import collect as collect_points
from adept.fronts_report import (
    GRID_COLUMNS,
    general_curves,
    grid_rows,
    markdown_table,
    paired_cell,
    plot_series,
    probe_notes,
    range_notes,
    seed_note,
)
from adept.fronts_report import matched_table as matched_cells
from adept.pipeline import Pipeline
from adept.plots import plot_curves
from adept.plots import plot_fronts as draw_fronts
from adept.sweep import (
    RecordError,
    check_base,
    merge_record,
    point_overrides,
    point_steps,
    read_record,
    recorded_labels,
    run_points,
)

FULL, ADEPT = "full", "adept"
RIVALS = ("llama-pro", "adept-no-stage2")
REPLAY_RATIO = 0.25
TARGET_SHARE = 0.25  # at full CPT's gain, ADEPT forgets at most this share of what full CPT forgets
CURVE_POINTS = 4  # full CPT's labels evaluate this many times in training, for its general loss over steps
START, END = "<!-- fronts:start -->", "<!-- fronts:end -->"


# Each method's own grid, spanning its useful range: methods that train a few new zero-output
# layers (or adapters) want higher rates than methods that move pretrained weights. The fourth
# rate of the expansion, LoRA and freeze fronts was added once the first three showed them still
# gaining at their highest rate.
GRID = (
    Front(FULL, "full", (1e-4, 3e-4, 1e-3)),
    Front(ADEPT, "adept", (3e-4, 1e-3, 3e-3, 1e-2)),
    Front("llama-pro", "llama-pro", (3e-4, 1e-3, 3e-3, 1e-2)),
    Front("adept-no-stage2", "adept-no-stage2", (3e-4, 1e-3, 3e-3, 1e-2)),
    Front("full-replay", "full", (1e-4, 3e-4, 1e-3), REPLAY_RATIO),
    Front("adept-replay", "adept", (3e-4, 1e-3, 3e-3, 1e-2), REPLAY_RATIO),
    Front("lora", "lora", (3e-4, 1e-3, 3e-3, 1e-2)),
    Front("freeze", "freeze", (1e-4, 3e-4, 1e-3, 3e-3)),
)
# Run order: the fronts of the first three targets, then the replay pair (the fourth target), then
# the rest; every rate of a group before the next group, so a partial grid decides what it can.
GROUPS = (4, 6, len(GRID))


def run_order() -> list[tuple[Front, float]]:
    """Group by group (``GROUPS``); in each, the second rates, then the third, then the first, then
    any rate above them, so every front of a group has a point before any runs its ends."""
    order = []
    for start, end in zip((0, *GROUPS[:-1]), GROUPS):
        group = GRID[start:end]
        for index in (1, 2, 0, *range(3, max(len(front.rates) for front in group))):
            order.extend((front, front.rates[index]) for front in group if index < len(front.rates))
    return order


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/fronts_smollm2.yaml", help="pipeline YAML (default: %(default)s)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument(
        "--output-root",
        default="runs/fronts/smollm2",
        help="one run directory per seed under it (default: %(default)s)",
    )
    parser.add_argument("--fronts", default=None, help="comma-separated front names to run (default: all of GRID)")
    parser.add_argument(
        "--rates",
        default=None,
        help="comma-separated learning rates to run, of those in each front's grid (default: all)",
    )
    parser.add_argument(
        "--labels",
        default=None,
        help="comma-separated front@rate labels to run, each in the grid; "
        "instead of --fronts and --rates, whose selection is their cross product",
    )
    parser.add_argument("--max-runs", type=int, default=None, help="train at most this many labels in this sitting")
    parser.add_argument(
        "--docs", default="docs/results.md", help="Markdown whose fronts section is rewritten (default: %(default)s)"
    )
    parser.add_argument(
        "--title",
        default="Real model: forgetting-versus-gain fronts (SmolLM2-135M-Instruct)",
        help="heading of the section written (default: %(default)s)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable"
    )
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each label's intermediate checkpoints")
    parser.add_argument("--report-only", action="store_true", help="rebuild the docs from the labels done so far")
    parser.add_argument("--list", action="store_true", help="print the grid in run order and what is done")
    return parser.parse_args(argv)


def regenerate_command(args: argparse.Namespace) -> str:
    """The command that runs (or resumes) this grid and rewrites this document (not ``--max-runs``)."""
    parts = ["python", "benchmarks/fronts.py"]
    defaults = parse_args([])
    for flag, value in (
        ("--config", args.config),
        ("--seeds", args.seeds),
        ("--output-root", args.output_root),
        ("--fronts", args.fronts),
        ("--rates", args.rates),
        ("--labels", args.labels),
        ("--docs", args.docs),
        ("--title", args.title),
    ):
        if value != getattr(defaults, flag[2:].replace("-", "_")):
            parts += [flag, value]
    for override in args.overrides:
        parts += ["--set", override]
    return shlex.join(parts)


# --- running --------------------------------------------------------------------------------


# --- aggregation ----------------------------------------------------------------------------


# --- running: each label one point of `adept sweep`'s runner ---------------------------------


def curve_args(front: Front, rate: float, cfg: PipelineConfig) -> dict[str, Any]:
    """Full CPT's labels evaluate ``CURVE_POINTS`` times in training (its general loss over steps); others once."""
    steps = point_steps(front, cfg)
    return {"eval_steps": max(1, steps // CURVE_POINTS) if front.method == FULL else steps}


def label_overrides(front: Front, rate: float, cfg: PipelineConfig) -> list[str]:
    """The label as a ``train.variants`` entry: its method, rate, replay and domain-token budget."""
    return point_overrides(front, rate, cfg, curve_args(front, rate, cfg))


def run_grid(
    args: argparse.Namespace,
    todo: list[tuple[Front, float]],
    seeds: list[int],
    root: Path,
    command: str,
    record: dict[str, Any] | None,
    record_path: Path,
) -> None:
    """Train every (front, rate) of ``todo`` not done yet, here or in the page's record, seed by seed.

    Before the first label of a seed with recorded runs, the base model is evaluated here and
    checked against the record, so a record from another model is refused before any training."""
    recorded = recorded_labels(record)

    def check_seed(seed: int) -> None:
        if record is None or str(seed) not in record.get("base", {}):
            return
        seeded = [*args.overrides, f"run_dir={root / f'seed{seed}'}"]
        results = Pipeline(load_config(args.config, seeded)).evaluate_base()
        here = base_summary(read_json(results, kind="evaluation")["runs"][0])
        check_base(record["base"][str(seed)], here, record_path, seed)

    run_points(
        args.config,
        list(args.overrides),
        [(seed, front, rate) for seed in seeds for front, rate in todo],
        root,
        command=command,
        max_runs=args.max_runs,
        keep_checkpoints=args.keep_checkpoints,
        skip=lambda seed, label: (seed, label) in recorded,
        before_seed=check_seed,
        extra_args=curve_args,
    )


def collect(root: Path, seeds: list[int]) -> dict[str, Any]:
    return collect_points(root, seeds, GRID)


# --- the document's tables, plots and notes, from the package's --------------------------------


def grid_table(data: dict[str, Any]) -> list[str]:
    return markdown_table(GRID_COLUMNS, grid_rows(data, GRID), "l" + "r" * (len(GRID_COLUMNS) - 1))


def matched_table(data: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    columns, rows, table = matched_cells(data, GRID, (FULL, ADEPT), FULL)
    return markdown_table(columns, rows, "l" + "r" * (len(columns) - 1)), table


def plot_fronts(data: dict[str, Any], path: Path) -> Path:
    return draw_fronts(plot_series(data, GRID), path, dpi=120)


def plot_curve(data: dict[str, Any], path: Path) -> Path | None:
    return plot_curves(
        general_curves(data, GRID[:1] + GRID[4:5]),
        path,
        ylabel="general held-out loss (State of the Union)",
        title="Full CPT's general loss over training",
        dpi=120,
    )


def notes(data: dict[str, Any], tokens: int | None = None) -> list[str]:
    """Facts read off the runs that the tables alone do not show."""
    lines = budget_note(data, tokens) if tokens else []
    lines += range_notes(data, GRID)
    for seed, rows in data["seeds"].items():
        base = data["base"][seed]["general_loss"]
        for rate in _front(FULL).rates:
            row = rows.get(label_of(_front(FULL), rate))
            if row and row["curve"]:
                first_step, first = row["curve"][0]
                last_step, last = row["curve"][-1]
                tag = rate_name(rate) + (f" (seed {seed})" if len(data["seeds"]) > 1 else "")
                lines.append(
                    f"- Full CPT at {tag}: general loss {base:.3f} at step 0, {first:.3f} at step {first_step}, "
                    f"{last:.3f} at step {last_step}."
                )
    lines += probe_notes(data, GRID)
    lines += seed_note(data, verdicts=True)
    if lines:
        lines.append(
            "- The starting point is the instruction-tuned SmolLM2-135M (the only SmolLM2 the package registry "
            "ships). Training on plain running text can first *lower* its loss on other plain text (the model leaves "
            "its chat register) before the domain pulls it away, so a small early drop of the general loss is not a "
            "gain in general ability; the zero-shot benchmarks are the second, independent measure of forgetting."
        )
        lines = ["### Notes", "", *lines, ""]
    return lines


def _front(name: str) -> Front:
    return next(f for f in GRID if f.name == name)


def check_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target met or missed with its numbers; undecided while a front it needs is incomplete."""
    targets = [_judge_fronts(data, target, names) for target, names in _targets(data)]
    return targets


def _judge_fronts(data: dict[str, Any], target: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    counts = {name: len(front_points(data, _front(name), "forgetting_pct")) for name in names}
    incomplete = {name: n for name, n in counts.items() if n < len(_front(name).rates)}
    if incomplete and target["status"] != "undecided":
        done = ", ".join(f"{name} {n}/{len(_front(name).rates)}" for name, n in incomplete.items())
        target = {**target, "status": "undecided", "detail": f"rates done: {done}; so far: {target['detail']}"}
    return target


def _targets(data: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    targets = []
    adept = front_points(data, _front(ADEPT), "forgetting_pct")
    for rival in RIVALS:
        other = front_points(data, _front(rival), "forgetting_pct")
        target = {"target": f"ADEPT's front lies below {rival}'s (less general-loss increase at every matched gain)"}
        # The shared range of the efficient rates: a rate past the useful range is not interpolated.
        verdict = compare_fronts(adept, other)
        if verdict["status"] == "undecided":
            target.update(status="undecided", detail="the two fronts have no common gain range yet")
        else:
            (lo, hi), gaps = verdict["range"], verdict["gaps"]
            digits = 1 if hi - lo >= 1 else 2
            target.update(
                status="met" if verdict["below"] else "missed",
                detail="; ".join(f"gain {g:.{digits}f}%: ADEPT {a:+.2f}% vs {o:+.2f}%" for g, a, o in gaps),
            )
        targets.append((target, (ADEPT, rival)))

    full_best = best_rate(data, _front(FULL))
    target = {"target": f"at full CPT's domain gain, ADEPT forgets at most {TARGET_SHARE:.0%} of what full CPT forgets"}
    if full_best is None or not adept:
        target.update(status="undecided", detail="full CPT or ADEPT not run yet")
    else:
        rate, gain = full_best
        full_forgetting = interpolate(front_points(data, _front(FULL), "forgetting_pct"), gain)
        adept_forgetting, kind = at_gain(adept, gain)
        if adept_forgetting is None:
            reach = max(g for _, g, _ in adept)
            target.update(
                status="missed",
                detail=f"full CPT at {rate_name(rate)} gains {gain:.1f}% domain loss; "
                f"ADEPT reaches at most {reach:.1f}% at the rates tried",
            )
        else:
            ok = adept_forgetting <= TARGET_SHARE * full_forgetting
            bound = "at most " if kind == "upper" else ""
            target.update(
                status="met" if ok else "missed",
                detail=f"gain {gain:.1f}% (full CPT at {rate_name(rate)}): ADEPT {bound}{adept_forgetting:+.2f}% vs "
                "full CPT "
                f"{full_forgetting:+.2f}% general loss (limit {TARGET_SHARE * full_forgetting:+.2f}%)",
            )
    targets.append((target, (ADEPT, FULL)))

    replay = {name: front_points(data, _front(name), "forgetting_pct") for name in ("adept-replay", "full-replay")}
    target = {"target": "ADEPT with replay against full CPT with replay, at matched gain"}
    best = best_rate(data, _front("full-replay"))
    if best is None or not replay["adept-replay"]:
        target.update(status="undecided", detail="the replay fronts are not run yet")
    else:
        rate, gain = best
        a, f = interpolate(replay["adept-replay"], gain), interpolate(replay["full-replay"], gain)
        if a is None:
            reach = max(g for _, g, _ in replay["adept-replay"])
            detail = f"full-replay at {rate_name(rate)} gains {gain:.1f}%; adept-replay reaches at most {reach:.1f}%"
            own = best_rate(data, _front("adept-replay"))
            f_own, kind = at_gain(replay["full-replay"], own[1])
            a_own = interpolate(replay["adept-replay"], own[1])
            if f_own is not None and a_own is not None:
                bound = "at most " if kind == "upper" else ""
                detail += (
                    f"; at adept-replay's own best gain ({own[1]:.1f}%, {rate_name(own[0])}): adept-replay "
                    f"{a_own:+.2f}% "
                    f"vs full-replay {bound}{f_own:+.2f}% general loss"
                )
            target.update(status="missed", detail=detail)
        else:
            target.update(
                status="met" if a < f else "missed",
                detail=f"gain {gain:.1f}%: adept-replay {a:+.2f}% vs full-replay {f:+.2f}% general loss",
            )
    targets.append((target, ("adept-replay", "full-replay")))
    return targets


# --- the document ---------------------------------------------------------------------------


def budget_note(data: dict[str, Any], tokens: int) -> list[str]:
    """Whether the token budget made full CPT forget: the premise of every forgetting target.

    "Clearly" means the paired general-accuracy 95% interval lies below zero.
    """
    full = _front(FULL)
    on_front = {rate for rate, _, _ in efficient(front_points(data, full, "forgetting_pct"))}
    clear, parts = [], []
    for seed, rows in data["seeds"].items():
        for rate in full.rates:
            row = rows.get(label_of(full, rate))
            if not row or row["forgetting_pct"] is None or row["domain_loss_change_pct"] is None:
                continue
            tag = rate_name(rate) + (f" (seed {seed})" if len(data["seeds"]) > 1 else "")
            ci = (row["general_acc_change"] or {}).get("ci")
            if ci is not None and ci[1] < 0:
                clear.append((tag, rate in on_front))
            parts.append(
                f"{tag}{'' if rate in on_front else ' (past its range)'}: domain loss "
                f"{row['domain_loss_change_pct']:+.1f}%, "
                f"general loss {row['forgetting_pct']:+.2f}%, general accuracy "
                f"{paired_cell(row['general_acc_change'])} pts"
            )
    if not parts:
        return []
    tags = ", ".join(tag for tag, _ in clear)
    where = f"at every rate run ({tags})" if len(clear) == len(parts) else f"only at {tags}"
    verdict = (
        f"clearly (accuracy interval below zero) {where}"
        if clear
        else "clearly at no rate (no accuracy interval below zero)"
    )
    line = (
        f"- Budget, {tokens:,} domain tokens per run: full CPT's general measures degraded {verdict}. "
        + "; ".join(parts)
        + "."
    )
    if not any(efficient_rate for _, efficient_rate in clear):
        line += (
            " At the rates where full CPT is efficient this budget leaves little forgetting to prevent, so the "
            "forgetting targets below compare methods in that regime only."
        )
    return [line]


def toy_comparison(data: dict[str, Any], toy_path: Path) -> list[str]:
    """What the toy-model comparison (``compare_methods.py``'s JSON) and the fronts disagree on.

    The toy runs every method at one rate; every real grid contains that rate, so the two are set
    side by side there: forgetting, gain, and forgetting per unit of gain (both in % of the base
    loss), then the method pairs the two order differently.
    """

    if not toy_path.is_file():
        return []
    toy = read_json(toy_path, kind="method-comparison")
    rate = float(load_config(toy["config"]).train.training_args["learning_rate"])
    rows = []
    for front in GRID:
        stats = toy["methods"].get(front.name)
        points = {r: (g, v) for r, g, v in front_points(data, front, "forgetting_pct")}
        match = next((points[r] for r in points if math.isclose(r, rate)), None)
        if stats is None or match is None:
            continue
        toy_forget, toy_gain = stats["general_loss_change_pct"]["mean"], -stats["domain_loss_change_pct"]["mean"]
        rows.append((front.name, toy_forget, toy_gain, toy_forget / toy_gain, match[1], match[0], match[1] / match[0]))
    if not rows:
        return []
    lines = [
        "### Against the toy model",
        "",
        f"The toy comparison below trains every method at {rate_name(rate)} on the demo model "
        f"({toy['budget'][0].split(': ')[-1]}); every real grid includes that rate, so the two are set side by side "
        "there. *Per gain* is forgetting divided by gain, both in % of the base model's loss (lower is better; "
        "negative: the general loss fell).",
        "",
        "| method | toy general loss Δ% | toy domain loss Δ% | toy per gain | real general loss Δ% | real domain "
        "loss Δ% | real per gain |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {tf:+.2f} | {-tg:+.2f} | {tr:.2f} | {rf:+.2f} | {-rg:+.2f} | {rr:.2f} |"
        for n, tf, tg, tr, rf, rg, rr in rows
    ]
    toy_order = [r[0] for r in sorted(rows, key=lambda r: r[3])]
    real_order = [r[0] for r in sorted(rows, key=lambda r: r[6])]
    flipped = [
        f"{a} / {b}"
        for i, a in enumerate(toy_order)
        for b in toy_order[i + 1 :]
        if real_order.index(a) > real_order.index(b)
    ]
    lines += [
        "",
        f"- Forgetting per gain, best first: toy {' < '.join(toy_order)}; real {' < '.join(real_order)}.",
        f"- The toy's general loss rises by {min(r[1] for r in rows):+.1f}% to {max(r[1] for r in rows):+.1f}% across "
        f"methods; the real model's by {min(r[4] for r in rows):+.1f}% to {max(r[4] for r in rows):+.1f}% at the "
        "same rate.",
        "- Pairs the two order differently (toy's better one first): "
        + ("; ".join(flipped) if flipped else "none")
        + ".",
        "- One rate puts each method at a different point of its front, so this table shows where the two settings "
        "differ, not which method is better: the matched-gain table above does.",
        "",
    ]
    return lines


def render(
    *,
    data: dict[str, Any],
    targets: list[dict[str, Any]],
    matched: list[str],
    commands: list[str],
    config: str,
    cfg,
    png: Path,
    curve: Path | None,
    hours: float,
    done: int,
    total: int,
    toy: list[str],
    title: str = "Real model: forgetting-versus-gain fronts",
) -> str:
    base = next(iter(data["base"].values()))
    args = cfg.train.training_args
    tokens = int(args["max_steps"]) * int(args["per_device_train_batch_size"]) * cfg.data.block_size
    grids = "; ".join(f"{f.name}: {', '.join(rate_name(r) for r in f.rates)}" for f in GRID)
    out = [
        START,
        f"## {title}",
        "",
        f"Every method adapts `{cfg.model}` (SmolLM2-135M-Instruct, dequantized from the PyPI GGUF; "
        "[`docs/real_models.md`](real_models.md)) to Gene Ontology text at each learning rate of its own grid, "
        f"{tokens:,} domain tokens per run ({args['max_steps']} steps x {args['per_device_train_batch_size']} x "
        f"{cfg.data.block_size}; replay methods take {REPLAY_RATIO:.0%} extra general steps so their domain tokens "
        "match), "
        f"warmup {args.get('warmup_steps')}, {args.get('lr_scheduler_type')} schedule, seed(s) "
        f"{', '.join(str(s) for s in data['seeds'])}. Expansion methods add {cfg.expansion.num_new_layers} layers. "
        f"Regenerate with (config [`{config}`](../{config})):",
        "",
        "```bash",
        *commands,
        "```",
        "",
        f"**Status: {done} of {total} runs done** ({hours:.1f} hours of 2-core CPU "
        f"time{' so far' if done < total else ''}, "
        "training plus evaluation).",
        "",
        f"Rate grids: {grids}.",
        "",
        "Which shipped defaults follow from these fronts, and which do not and why: "
        "[`docs/real_models.md`](real_models.md#defaults-chosen-from-the-fronts).",
        "",
        "Measures, each against the base model on the same items: **forgetting** = change of the held-out loss on "
        "State "
        f"of the Union addresses (base {base['general_loss']:.3f}; no text of that source is trained on, replay is "
        "Austen) and "
        "of the mean accuracy over ARC-Easy, ARC-Challenge, HellaSwag, PIQA, Winogrande and OpenBookQA (acc_norm "
        "where the "
        f"harness has it, else acc; a seeded subset of {cfg.evaluation.limit} items each, pooled, paired per item, "
        "normal 95% "
        f"interval); **gain** = change of the held-out Gene Ontology loss (base {base['domain_loss']:.3f}) and of "
        "`go_heldout_mc` acc_norm (same items, paired).",
        "",
        f"![fronts]({png.name})",
        "",
    ]
    if curve:
        out += [f"![full CPT's general loss over steps]({curve.name})", ""]
    out += notes(data, tokens)
    out += [
        "### Every run",
        "",
        *grid_table(data),
        "",
        "### Matched gain",
        "",
        "Each front interpolated linearly between its efficient rates (never extrapolated; a rate with less gain *and* "
        "more forgetting than another of the same method is left out) at the domain-loss gain that full CPT and ADEPT "
        'reach at their best rate (the rate with the largest domain gain). "≤" marks a gain below the front\'s '
        "smallest: "
        "the forgetting of that rate, which gains more than asked. Time per token counts optimizer steps only "
        "(not evaluation, saves or ADEPT's importance probes) and takes each method's fastest run, relative to full "
        "CPT's fastest: a step's work does not depend on the rate, and other load on the shared 2-core machine only "
        "slows a run down. Peak memory is the mean over the method's runs relative to full CPT's.",
        "",
        *matched,
        "",
        "### Targets",
        "",
        "Each verdict from the mean over the seeds that ran each rate (seeds run: "
        f"{', '.join(str(s) for s in data['seeds'])}), on the "
        'general held-out loss; "undecided" while a front it compares is incomplete.',
        "",
        "| target | status | numbers |",
        "|---|---|---|",
    ]
    out += [f"| {t['target']} | **{t['status']}** | {t['detail']} |" for t in targets]
    out += ["", *toy, END]
    return "\n".join(out)


def stage_seconds(stages: dict[str, Any], labels: set[str]) -> float:
    """Time of the shared stages and of the training and evaluation of ``labels`` (the runs reported),
    not of other labels a run directory also records (e.g. another grid's, or unfinished ones)."""
    total = 0.0
    for name, stage in stages.items():
        kind, _, label = name.partition(":")
        if kind not in ("train", "eval") or label == "base" or label in labels:
            total += stage.get("seconds") or 0.0
    return total


def write_section(path: Path, section: str) -> Path:
    """Replace the fronts section of ``path`` (or put it under the title), keeping everything else."""

    old = path.read_text() if path.is_file() else "# Method comparison\n"
    if START in old and END in old:
        text = old[: old.index(START)] + section + old[old.index(END) + len(END) :]
    else:
        title, _, rest = old.partition("\n")
        text = f"{title}\n\n{section}\n\n{rest.lstrip()}"
    return write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    root = Path(args.output_root)
    names = [n.strip() for n in args.fronts.split(",")] if args.fronts else [f.name for f in GRID]
    unknown = sorted(set(names) - {f.name for f in GRID})
    if unknown:
        print(
            f"error: --fronts: unknown front(s) {', '.join(unknown)}; known: {', '.join(f.name for f in GRID)}",
            file=sys.stderr,
        )
        return 2
    fronts = [f for f in GRID if f.name in names]
    try:
        asked = {float(r) for r in args.rates.split(",") if r.strip()} if args.rates else set()
    except ValueError:
        print(f"error: --rates: '{args.rates}' is not a comma-separated list of numbers", file=sys.stderr)
        return 2
    if asked - {r for f in fronts for r in f.rates}:
        known = ", ".join(rate_name(r) for r in sorted({r for f in fronts for r in f.rates}))
        print(
            f"error: --rates: {', '.join(rate_name(r) for r in sorted(asked))} not all in the grid of the fronts "
            f"asked for; known: {known}",
            file=sys.stderr,
        )
        return 2
    grid = {label_of(front, rate): (front, rate) for front, rate in run_order()}
    if args.labels:
        if args.fronts or args.rates:
            print("error: --labels names exact runs; give it without --fronts and --rates", file=sys.stderr)
            return 2
        wanted = {label.strip() for label in args.labels.split(",") if label.strip()}
        unknown = sorted(wanted - grid.keys())
        if unknown:
            print(
                f"error: --labels: {', '.join(unknown)} not in the grid (front@rate, e.g. "
                f"{label_of(GRID[0], GRID[0].rates[0])}; "
                "see --list)",
                file=sys.stderr,
            )
            return 2
        selected = [pair for label, pair in grid.items() if label in wanted]
    else:
        selected = [(front, rate) for front, rate in grid.values() if front in fronts and (not asked or rate in asked)]

    cfg = load_config(args.config, list(args.overrides))
    docs = Path(args.docs)
    record_path = docs.with_name(f"{docs.stem}_fronts.json")
    try:
        record = read_record(record_path, args.config, list(args.overrides), cfg, grid)
    except RecordError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    recorded = recorded_labels(record)
    if args.list:
        for seed in seeds:
            for front, rate in selected:
                label = label_of(front, rate)
                done = (
                    "done"
                    if is_done(root / f"seed{seed}", label)
                    else f"done (in {record_path})"
                    if (seed, label) in recorded
                    else "todo"
                )
                print(f"seed {seed}  {label:24s} {done}")
        return 0
    command = regenerate_command(args)
    try:
        if not args.report_only:
            run_grid(args, selected, seeds, root, command, record, record_path)
        data = collect(root, seeds)
        kept = merge_record(data, record, record_path, seeds) if record else []
    except RecordError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not any(data["seeds"].values()):
        print(f"no finished label under {root}" + (f" or in {record_path}" if record else ""), file=sys.stderr)
        return 1
    png = plot_fronts(data, docs.with_name(f"{docs.stem}_fronts.png"))
    curve = plot_curve(data, docs.with_name(f"{docs.stem}_fronts_curve.png"))
    targets = check_targets(data)
    matched, matched_json = matched_table(data)
    labels = [label_of(front, rate) for front, rate in selected]
    seconds = 0.0
    for seed in seeds:
        pipeline = root / f"seed{seed}" / "pipeline.json"
        if pipeline.is_file():
            stages = read_json(pipeline, kind="pipeline")["stages"]
            seconds += stage_seconds(stages, {label for label in labels if label in data["seeds"].get(seed, {})})
    # A recorded label's time is its whole `adept run`, the shared stages included when it ran first.
    seconds += sum(row.get("run_seconds") or 0.0 for row in kept if row["label"] in labels)
    done = sum(label in rows for rows in data["seeds"].values() for label in labels)
    if record and len(kept) == done and record.get("done") == done and "cpu_hours" in record:
        # Every label comes from the record: its time is the one measured from the run directories then.
        seconds = 3600 * record["cpu_hours"]
    total = len(seeds) * len(labels)
    section = render(
        data=data,
        targets=targets,
        matched=matched,
        commands=[command],
        config=args.config,
        cfg=cfg,
        png=png,
        curve=curve,
        hours=seconds / 3600,
        done=done,
        total=total,
        toy=toy_comparison(data, docs.with_suffix(".json")),
        title=args.title,
    )
    write_section(docs, section)
    write_json(
        record_path,
        {
            **artifact_header("fronts"),
            "config": args.config,
            "overrides": list(args.overrides),
            "seeds": seeds,
            "done": done,
            "total": total,
            "cpu_hours": seconds / 3600,
            "grid": [
                {"name": f.name, "method": f.method, "rates": list(f.rates), "replay_ratio": f.replay_ratio}
                for f in GRID
            ],
            "base": data["base"],
            "runs": {str(s): rows for s, rows in data["seeds"].items()},
            "matched_gain": matched_json,
            "targets": targets,
        },
    )
    print("\n".join(line for line in section.splitlines() if line.startswith("|")))
    print(f"\nwritten: {docs}, {png}" + (f", {curve}" if curve else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
