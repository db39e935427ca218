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
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adept.config import PipelineConfig

FULL, ADEPT = "full", "adept"
RIVALS = ("llama-pro", "adept-no-stage2")
REPLAY_RATIO = 0.25
TARGET_SHARE = 0.25  # at full CPT's gain, ADEPT forgets at most this share of what full CPT forgets
CURVE_POINTS = 4  # full CPT's labels evaluate this many times in training, for its general loss over steps
START, END = "<!-- fronts:start -->", "<!-- fronts:end -->"
MACHINE_NAME = "machine.json"


@dataclass(frozen=True)
class Front:
    """One method's front: the method it trains, its replay share and its learning-rate grid."""

    name: str
    method: str
    rates: tuple[float, ...]
    replay_ratio: float = 0.0


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


def rate_name(rate: float) -> str:
    mantissa, exponent = f"{rate:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def label_of(front: Front, rate: float) -> str:
    return f"{front.name}@{rate_name(rate)}"


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


def label_steps(front: Front, cfg) -> int:
    """Optimizer steps of a label: the config's, or more for replay, which adds steps instead of
    taking them so that every label sees as many domain tokens."""
    from adept.training import DEFAULT_TRAINING_ARGS

    steps = int({**DEFAULT_TRAINING_ARGS, **cfg.train.training_args}["max_steps"])
    return math.ceil(steps / (1 - front.replay_ratio)) if front.replay_ratio else steps


def label_overrides(front: Front, rate: float, cfg: PipelineConfig) -> list[str]:
    """The label as a ``train.variants`` entry: its method, rate, replay and domain-token budget."""
    label = label_of(front, rate)
    key = f"train.variants.{label}"
    steps = label_steps(front, cfg)
    overrides = [
        f"train.methods=[{label}]",
        f"{key}.method={front.method}",
        f"{key}.training_args.learning_rate={rate}",
    ]
    if front.replay_ratio:
        overrides += [f"{key}.replay_ratio={front.replay_ratio}", f"{key}.training_args.max_steps={steps}"]
    eval_steps = max(1, steps // CURVE_POINTS) if front.method == FULL else steps
    overrides.append(f"{key}.training_args.eval_steps={eval_steps}")
    return overrides


def seed_overrides(root: Path, seed: int) -> list[str]:
    return [
        f"train.training_args.seed={seed}",
        f"train.training_args.data_seed={seed}",
        f"run_dir={root / f'seed{seed}'}",
    ]


def is_done(run_dir: Path, label: str) -> bool:
    from adept.pipeline import results_path

    return results_path(run_dir, label).is_file()


def tidy(run_dir: Path, label: str) -> None:
    """Drop a finished label's intermediate checkpoints (GBs each), keeping its trainer log."""
    from adept.pipeline import train_dir
    from adept.training import last_complete_checkpoint

    out = train_dir(run_dir, label)
    last = last_complete_checkpoint(out)
    if last is not None:
        shutil.copy2(Path(last) / "trainer_state.json", out / "trainer_state.json")
    for path in out.glob("checkpoint-*"):
        shutil.rmtree(path)


def run_grid(
    args: argparse.Namespace,
    config: PipelineConfig,
    todo: list[tuple[Front, float]],
    seeds: list[int],
    root: Path,
    command: str,
    record: dict[str, Any] | None,
    record_path: Path,
) -> None:
    """Train every (front, rate) of ``todo`` not done yet, here or in the page's record, seed by seed, in that order.

    Before the first label of a seed with recorded runs, the base model is evaluated here and
    checked against the record, so a record from another model is refused before any training."""
    from compare_methods import machine_info

    from adept.artifacts import read_json, write_json
    from adept.config import load_config
    from adept.pipeline import Pipeline, run_pipeline, train_dir

    recorded = recorded_labels(record)
    ran = 0
    for seed in seeds:
        run_dir = root / f"seed{seed}"
        checked = record is None or str(seed) not in record.get("base", {})
        for front, rate in todo:
            label = label_of(front, rate)
            if is_done(run_dir, label) or (seed, label) in recorded:
                continue
            if args.max_runs is not None and ran >= args.max_runs:
                print(f"== --max-runs {args.max_runs} reached; rerun to continue", flush=True)
                return
            if not checked:
                results = Pipeline(
                    load_config(args.config, [*args.overrides, *seed_overrides(root, seed)])
                ).evaluate_base()
                check_base(
                    record["base"][str(seed)],
                    base_summary(read_json(results, kind="evaluation")["runs"][0]),
                    record_path,
                    seed,
                )
                checked = True
            cfg = load_config(
                args.config, [*args.overrides, *seed_overrides(root, seed), *label_overrides(front, rate, config)]
            )
            print(f"== seed {seed}: {label} -> {run_dir}", flush=True)
            started = time.monotonic()
            run_pipeline(cfg)
            if not args.keep_checkpoints:
                tidy(run_dir, label)
            write_json(
                train_dir(run_dir, label) / MACHINE_NAME,
                {"seed": seed, "command": command, "seconds": time.monotonic() - started, **machine_info(cfg.device)},
            )
            ran += 1


# --- aggregation ----------------------------------------------------------------------------


def primary_metric(entry: dict[str, Any]) -> str:
    """acc_norm where the harness reports it (ARC, HellaSwag, PIQA, OpenBookQA), else acc."""
    return "acc_norm" if "acc_norm" in entry.get("items", {}) else "acc"


def pooled_items(benchmarks: dict[str, Any], domain: str) -> dict[str, list]:
    """Every item of one side's benchmarks as one list, keyed by benchmark and document id."""
    items: dict[str, list] = {"doc_id": [], "score": []}
    for name, entry in sorted(benchmarks.items()):
        if entry.get("domain") != domain or "items" not in entry:
            continue
        metric = "acc_norm" if domain == "domain" else primary_metric(entry)
        scores = entry["items"].get(metric) or entry["items"]["acc"]
        items["doc_id"] += [f"{name}:{doc}" for doc in entry["items"]["doc_id"]]
        items["score"] += list(scores)
    return items


def eval_curve(run_dir: Path, label: str, corpus: str) -> list[tuple[int, float]]:
    """(step, loss on held-out ``corpus``) from the label's trainer log (``eval_<corpus>_loss``)."""
    from adept.artifacts import read_json
    from adept.pipeline import train_dir

    path = train_dir(run_dir, label) / "trainer_state.json"
    if not path.is_file():
        return []
    points = []
    for entry in read_json(path)["log_history"]:
        if f"eval_{corpus}_loss" in entry:
            points.append((entry["step"], entry[f"eval_{corpus}_loss"]))
    return points


def read_label(run_dir: Path, label: str, base: dict[str, Any]) -> dict[str, Any]:
    from adept.artifacts import read_json
    from adept.benchmarks import paired_difference
    from adept.evaluation import SUMMARY_NAME, weighted_loss
    from adept.pipeline import results_path, train_dir

    run = read_json(results_path(run_dir, label), kind="evaluation")["runs"][0]
    trained = train_dir(run_dir, label)
    summary = read_json(trained / SUMMARY_NAME, kind="training")
    machine_path = trained / MACHINE_NAME
    row: dict[str, Any] = {"label": label}
    for side in ("general", "domain"):
        loss, base_loss = weighted_loss(run["perplexity"], side), weighted_loss(base["perplexity"], side)
        row[f"{side}_loss"] = loss
        row[f"{side}_loss_change_pct"] = None if loss is None or base_loss is None else 100 * (loss / base_loss - 1)
        paired = paired_difference(
            pooled_items(base["benchmarks"], side), pooled_items(run["benchmarks"], side), "score"
        )
        row[f"{side}_acc_change"] = paired
    row["forgetting_pct"] = row["general_loss_change_pct"]
    row["gain_pct"] = None if row["domain_loss_change_pct"] is None else -row["domain_loss_change_pct"]
    row["tokens_per_second"] = summary.get("tokens_per_second")
    row["peak_memory_bytes"] = summary.get("peak_memory_bytes")
    row["trainable_share"] = summary.get("trainable_share")
    row["train_seconds"] = summary.get("train_seconds")
    row["reestimation_seconds"] = summary.get("reestimation_seconds")
    row["domain_tokens"] = summary.get("domain_tokens")
    row["steps"] = summary.get("global_step")
    row["run_seconds"] = read_json(machine_path)["seconds"] if machine_path.is_file() else None
    # The general held-out corpus the curve follows: the first one, named as in results.json.
    general = next((name for name, e in run["perplexity"].items() if e["domain"] == "general"), None)
    row["curve"] = eval_curve(run_dir, label, general) if general else []
    return row


def collect(root: Path, seeds: list[int]) -> dict[str, Any]:
    """Every finished label of every seed, as rows grouped by front and rate."""
    from adept.artifacts import read_json
    from adept.evaluation import SUMMARY_NAME
    from adept.pipeline import BASE_LABEL, results_path, train_dir

    data: dict[str, Any] = {"seeds": {}, "base": {}}
    for seed in seeds:
        run_dir = root / f"seed{seed}"
        base_path = results_path(run_dir, BASE_LABEL)
        if not base_path.is_file():
            continue
        base = read_json(base_path, kind="evaluation")["runs"][0]
        data["base"][seed] = base_summary(base)
        rows = {}
        for front in GRID:
            for rate in front.rates:
                label = label_of(front, rate)
                if is_done(run_dir, label) and (train_dir(run_dir, label) / SUMMARY_NAME).is_file():
                    rows[label] = read_label(run_dir, label, base)
        data["seeds"][seed] = rows
    return data


def base_summary(base: dict[str, Any]) -> dict[str, Any]:
    """What the page keeps of the base model's evaluation: the losses every row is a change from, and its accuracies."""
    from adept.evaluation import weighted_loss

    return {
        "general_loss": weighted_loss(base["perplexity"], "general"),
        "domain_loss": weighted_loss(base["perplexity"], "domain"),
        "benchmarks": {k: {m: v.get(m) for m in ("acc", "acc_norm", "n")} for k, v in base["benchmarks"].items()},
    }


# --- the record: labels an earlier sitting reported ---------------------------------------
# Run directories hold gigabytes and stay on the machine that trained them; the page's JSON is
# committed. Reading its rows back lets a grid continue on another machine without retraining
# what is done, as long as the record was made with the same config, overrides and budget, and
# from the same base model (checked against the base evaluation made here).

BASE_TOLERANCE = 1e-4  # relative; the same model on the same data evaluates alike far closer than this


class RecordError(ValueError):
    """A page's record that cannot be continued here; the message names the file and key."""


def read_record(
    path: Path, config: str, overrides: list[str], cfg, grid: dict[str, tuple[Front, float]]
) -> dict[str, Any] | None:
    """The fronts record at ``path`` (a page's JSON), or None where there is none; refuses one made
    with another config, other ``--set`` overrides or another number of steps per label."""
    from adept.artifacts import read_json

    if not path.is_file():
        return None
    record = read_json(path, kind="fronts")
    fix = "rerun with the record's settings, or remove the file to start this page afresh"
    if record.get("config") != config:
        raise RecordError(f"{path}: config: the recorded runs used {record.get('config')}, not {config}; {fix}")
    if "overrides" in record and sorted(record["overrides"]) != sorted(overrides):
        raise RecordError(
            f"{path}: overrides: the recorded runs used --set {record['overrides']}, not {overrides}; {fix}"
        )
    for seed, rows in record.get("runs", {}).items():
        for label, row in rows.items():
            if label not in grid:
                raise RecordError(f"{path}: runs.{seed}.{label}: not a label of the grid; {fix}")
            steps = label_steps(grid[label][0], cfg)
            if row.get("steps") != steps:
                raise RecordError(
                    f"{path}: runs.{seed}.{label}.steps: recorded {row.get('steps')}, this config trains {steps}; {fix}"
                )
    return record


def check_base(recorded: dict[str, Any], here: dict[str, Any], path: Path, seed: int) -> None:
    """Refuse a record whose base evaluation differs from the one made here: every row is a change from it."""
    why = "the recorded runs started from another model or data: remove the file to start this page afresh"
    for key in ("general_loss", "domain_loss"):
        if not math.isclose(here[key], recorded[key], rel_tol=BASE_TOLERANCE):
            raise RecordError(
                f"{path}: base.{seed}.{key}: recorded {recorded[key]:.6f}, evaluated here {here[key]:.6f}; {why}"
            )
    if here["benchmarks"] != recorded["benchmarks"]:
        raise RecordError(
            f"{path}: base.{seed}.benchmarks: the recorded accuracies differ from those evaluated here; {why}"
        )


def recorded_labels(record: dict[str, Any] | None) -> set[tuple[int, str]]:
    return {(int(seed), label) for seed, rows in (record or {}).get("runs", {}).items() for label in rows}


def merge_record(data: dict[str, Any], record: dict[str, Any], path: Path, seeds: list[int]) -> list[dict[str, Any]]:
    """Add to ``data`` the recorded rows of ``seeds`` that no run directory here holds, and return
    them. A seed whose base model was evaluated here must match the recorded base evaluation: every
    row is a change from it."""
    kept = []
    for seed in seeds:
        rows = record.get("runs", {}).get(str(seed), {})
        base = record.get("base", {}).get(str(seed))
        if not rows or base is None:
            continue
        here = data["base"].get(seed)
        if here is not None:
            check_base(base, here, path, seed)
        data["base"].setdefault(seed, base)
        fresh = data["seeds"].setdefault(seed, {})
        for label, row in rows.items():
            if label not in fresh:
                fresh[label] = row
                kept.append(row)
    data["seeds"] = dict(sorted(data["seeds"].items()))
    data["base"] = dict(sorted(data["base"].items()))
    return kept


def front_points(data: dict[str, Any], front: Front, key: str) -> list[tuple[float, float, float]]:
    """(rate, mean gain, mean of ``key``) per rate done in every seed that has the label."""
    points = []
    for rate in front.rates:
        label = label_of(front, rate)
        rows = [rows[label] for rows in data["seeds"].values() if label in rows]
        values = [_value(row, key) for row in rows]
        gains = [row["gain_pct"] for row in rows]
        if rows and None not in values and None not in gains:
            points.append((rate, sum(gains) / len(gains), sum(values) / len(values)))
    return points


def seed_counts(data: dict[str, Any]) -> dict[str, int]:
    """How many seeds ran each label that at least one ran."""
    counts: dict[str, int] = {}
    for rows in data["seeds"].values():
        for label in rows:
            counts[label] = counts.get(label, 0) + 1
    return counts


def seed_range(data: dict[str, Any], front: Front, rate: float, key: str) -> tuple[float, float] | None:
    """(lowest, highest) of ``key`` over the seeds that ran the label; None for fewer than two."""
    values = [
        _value(rows[label_of(front, rate)], key) for rows in data["seeds"].values() if label_of(front, rate) in rows
    ]
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if len(values) > 1 else None


def _value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, dict):
        return value["diff"]
    return value


def efficient(points: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """The rates on the method's front: those no other rate beats on both gain and forgetting.

    A rate past the useful range (more forgetting *and* less gain than a lower one) is shown in
    the table and the plot but is not a trade-off anyone would pick, so it is not interpolated.
    """
    return [
        p
        for p in points
        if not any(q is not p and q[1] >= p[1] and q[2] <= p[2] and (q[1] > p[1] or q[2] < p[2]) for q in points)
    ]


def _on_front(points: list[tuple[float, float, float]], rates: set[float] | None) -> list[tuple[float, float, float]]:
    return efficient(points) if rates is None else [p for p in points if p[0] in rates]


def interpolate(points: list[tuple[float, float, float]], gain: float, rates: set[float] | None = None) -> float | None:
    """The front's forgetting at ``gain``, linear between its efficient rates; None outside them.

    ``rates`` names the efficient rates when ``points`` carry another measure than the one they
    were chosen on (benchmark accuracy along the general-loss front).
    """
    ordered = sorted((g, v) for _, g, v in _on_front(points, rates))
    for (g0, v0), (g1, v1) in zip(ordered, ordered[1:]):
        if g0 <= gain <= g1:
            return v0 if g1 == g0 else v0 + (v1 - v0) * (gain - g0) / (g1 - g0)
    if ordered and math.isclose(ordered[0][0], gain, abs_tol=1e-9):
        return ordered[0][1]
    return None


def at_gain(
    points: list[tuple[float, float, float]], gain: float, rates: set[float] | None = None
) -> tuple[float | None, str]:
    """Forgetting at ``gain``: interpolated ("exact"), or, below the front's smallest gain, the
    forgetting of that rate ("upper": the method gets more gain than asked at that cost)."""
    value = interpolate(points, gain, rates)
    if value is not None:
        return value, "exact"
    front = _on_front(points, rates)
    if front and gain < min(g for _, g, _ in front):
        return min(front, key=lambda p: p[1])[2], "upper"
    return None, "not reached"


def best_rate(data: dict[str, Any], front: Front) -> tuple[float, float] | None:
    """(rate, gain) of the rate with the largest domain gain: what a user adapting to the domain picks."""
    points = front_points(data, front, "forgetting_pct")
    return max(((rate, gain) for rate, gain, _ in points), key=lambda p: p[1], default=None)


def _front(name: str) -> Front:
    return next(f for f in GRID if f.name == name)


def _front_values(data: dict[str, Any], front: Front, key: str) -> list[float]:
    return [
        row[key]
        for rows in data["seeds"].values()
        for label, row in rows.items()
        if label.split("@")[0] == front.name and row.get(key) is not None
    ]


def mean_over_rates(data: dict[str, Any], front: Front, key: str) -> float | None:
    values = _front_values(data, front, key)
    return sum(values) / len(values) if values else None


def fastest(data: dict[str, Any], front: Front) -> float | None:
    """The front's highest optimizer-step throughput over its runs.

    The learning rate does not change the work of a step, so the runs of one front repeat one
    measurement; on a shared machine, other load only slows a run down, so the fastest run is the
    least disturbed one (as ``timeit`` takes the minimum).
    """
    return max(_front_values(data, front, "tokens_per_second"), default=None)


def shared_breakpoints(
    a: list[tuple[float, float, float]], b: list[tuple[float, float, float]], lo: float, hi: float
) -> list[float]:
    """The gains in ``[lo, hi]`` where either front has a rate, plus both ends.

    Between these gains both fronts are straight, so their difference is too: one front lies
    below the other at every gain of the range exactly when it does at each of these.
    """
    inside = {g for _, g, _ in (*efficient(a), *efficient(b)) if lo < g < hi}
    return sorted({lo, hi} | inside)


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
        gains = [[g for _, g, _ in efficient(points)] for points in (adept, other)]
        lo = max(min(g, default=math.inf) for g in gains)
        hi = min(max(g, default=-math.inf) for g in gains)
        if len(adept) < 2 or len(other) < 2 or lo > hi:
            target.update(status="undecided", detail="the two fronts have no common gain range yet")
        else:
            gaps = [(g, interpolate(adept, g), interpolate(other, g)) for g in shared_breakpoints(adept, other, lo, hi)]
            below = all(a < o for _, a, o in gaps)
            digits = 1 if hi - lo >= 1 else 2
            target.update(
                status="met" if below else "missed",
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


def _fmt(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def _paired_cell(paired: dict[str, Any] | None, scale: float = 100) -> str:
    if not paired:
        return "–"
    ci = paired.get("ci")
    interval = f" [{ci[0] * scale:+.1f}, {ci[1] * scale:+.1f}]" if ci else ""
    return f"{paired['diff'] * scale:+.1f}{interval}"


def grid_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| method | rate | general loss Δ% | domain loss Δ% | general acc Δ (pts, 95% CI) | domain acc_norm Δ (pts, "
        "95% CI) | "
        "trainable % | tokens/s | peak mem GiB | run min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for front in GRID:
        for rate in front.rates:
            label = label_of(front, rate)
            for seed, rows in data["seeds"].items():
                row = rows.get(label)
                if not row:
                    continue
                name = front.name if len(data["seeds"]) == 1 else f"{front.name} (seed {seed})"
                lines.append(
                    f"| {name} | {rate_name(rate)} | {_fmt(row['general_loss_change_pct'], '+.2f')} | "
                    f"{_fmt(row['domain_loss_change_pct'], '+.2f')} | {_paired_cell(row['general_acc_change'])} | "
                    f"{_paired_cell(row['domain_acc_change'])} | "
                    f"{_fmt(row['trainable_share'] and 100 * row['trainable_share'], '.1f')} | "
                    f"{_fmt(row['tokens_per_second'], '.0f')} | "
                    f"{_fmt(row['peak_memory_bytes'] and row['peak_memory_bytes'] / 2**30, '.2f')} | "
                    f"{_fmt(row['run_seconds'] and row['run_seconds'] / 60, '.0f')} |"
                )
    return lines


def matched_table(data: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    anchors = {}
    for name in (FULL, ADEPT):
        best = best_rate(data, _front(name))
        if best:
            anchors[name] = best
    header = "| method | rates done |"
    rule = "|---|---:|"
    for name, (_rate, gain) in anchors.items():
        header += f" general loss Δ% at {name}'s gain ({gain:.1f}%) | general acc Δ (pts) at that gain |"
        rule += "---:|---:|"
    header += " time/token ÷ full | peak mem ÷ full |"
    rule += "---:|---:|"
    lines = [header, rule]
    table: dict[str, Any] = {"anchors": {k: {"rate": r, "gain_pct": g} for k, (r, g) in anchors.items()}, "rows": {}}
    full_tps = fastest(data, _front(FULL))
    full_mem = mean_over_rates(data, _front(FULL), "peak_memory_bytes")
    for front in GRID:
        loss_points = front_points(data, front, "forgetting_pct")
        acc_points = front_points(data, front, "general_acc_change")
        if not loss_points:
            continue
        cells = [front.name, str(len(loss_points))]
        entry: dict[str, Any] = {}
        for name, (_, gain) in anchors.items():
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
        time_ratio = full_tps / tps if tps and full_tps else None
        mem_ratio = mem / full_mem if mem and full_mem else None
        cells += [_fmt(time_ratio, ".2f"), _fmt(mem_ratio, ".2f")]
        entry.update(time_per_token_vs_full=time_ratio, peak_memory_vs_full=mem_ratio)
        table["rows"][front.name] = entry
        lines.append("| " + " | ".join(cells) + " |")
    return lines, table


def plot_fronts(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for front in GRID:
        loss = front_points(data, front, "forgetting_pct")
        if not loss:
            continue
        style = "--" if front.replay_ratio else "-"
        (line,) = axes[0].plot([g for _, g, _ in loss], [v for _, _, v in loss], style, marker="o", label=front.name)
        for rate, gain, value in loss:
            axes[0].annotate(rate_name(rate), (gain, value), fontsize=7, xytext=(3, 3), textcoords="offset points")
            spread = seed_range(data, front, rate, "forgetting_pct"), seed_range(data, front, rate, "gain_pct")
            if None not in spread:  # seeds as error bars: the range of the seeds' values around their mean
                (v_lo, v_hi), (g_lo, g_hi) = spread
                axes[0].errorbar(
                    [gain],
                    [value],
                    xerr=[[gain - g_lo], [g_hi - gain]],
                    yerr=[[value - v_lo], [v_hi - value]],
                    fmt="none",
                    color=line.get_color(),
                    capsize=2,
                    lw=0.8,
                )
        rows = [
            rows[label_of(front, rate)]
            for rate, _, _ in loss
            for rows in data["seeds"].values()
            if label_of(front, rate) in rows
        ]
        xs, ys, lo, hi = [], [], [], []
        for row in rows:
            general, domain = row["general_acc_change"], row["domain_acc_change"]
            if not general or not domain:
                continue
            xs.append(100 * domain["diff"])
            ys.append(-100 * general["diff"])
            ci = general.get("ci") or [general["diff"]] * 2
            lo.append(100 * (ci[1] - general["diff"]))
            hi.append(100 * (general["diff"] - ci[0]))
        if xs:
            axes[1].errorbar(
                xs, ys, yerr=[lo, hi], fmt=style + "o", color=line.get_color(), capsize=2, label=front.name
            )
    _clip_past_range(axes[0], [(front, front_points(data, front, "forgetting_pct")) for front in GRID])
    axes[0].axhline(0, color="grey", lw=0.5)
    axes[0].set(
        xlabel="gain: domain held-out loss decrease (%)",
        ylabel="forgetting: general held-out loss increase (%)",
        title="Loss (labels: learning rate)",
    )
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].axvline(0, color="grey", lw=0.5)
    axes[1].set(
        xlabel="gain: domain benchmark acc_norm change (points)",
        ylabel="forgetting: general benchmark accuracy drop (points)",
        title="Benchmarks (bars: 95% paired CI)",
    )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _clip_past_range(ax, fronts_points: list[tuple[Front, list[tuple[float, float, float]]]]) -> None:
    """Keep the efficient points readable: a rate past the useful range that forgets far more than
    any efficient point is drawn off the top of the axis, its value written at the edge."""
    efficient_values = [v for _, points in fronts_points for _, _, v in efficient(points)]
    all_values = [v for _, points in fronts_points for _, _, v in points]
    if not efficient_values:
        return
    low, high = min(all_values), max(efficient_values)
    top = high + max(1.0, 0.5 * (high - low))
    if max(all_values) <= top:
        return
    ax.set_ylim(low - 0.1 * (top - low), top)
    clipped = sorted(
        (gain, value, f"{front.name} {rate_name(rate)}")
        for front, points in fronts_points
        for rate, gain, value in points
        if value > top
    )
    for i, (gain, value, name) in enumerate(clipped):  # staggered, so labels at close gains stay apart
        ax.annotate(
            f"{name}: {value:+.1f}% ↑",
            (gain, top),
            fontsize=7,
            ha="center",
            xytext=(0, -10 - 9 * (i % 3)),
            textcoords="offset points",
        )


def plot_curve(data: dict[str, Any], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for seed, rows in data["seeds"].items():
        base = data["base"][seed]["general_loss"]
        for front in GRID[:1] + GRID[4:5]:
            for rate in front.rates:
                row = rows.get(label_of(front, rate))
                if row and row["curve"]:
                    steps = [0] + [s for s, _ in row["curve"]]
                    losses = [base] + [v for _, v in row["curve"]]
                    ax.plot(
                        steps,
                        losses,
                        "--" if front.replay_ratio else "-",
                        marker=".",
                        label=f"{front.name} {rate_name(rate)}",
                    )
                    drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(
        xlabel="optimizer step",
        ylabel="general held-out loss (State of the Union)",
        title="Full CPT's general loss over training",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
                f"{_paired_cell(row['general_acc_change'])} pts"
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


def notes(data: dict[str, Any], tokens: int | None = None) -> list[str]:
    """Facts read off the runs that the tables alone do not show."""
    lines = budget_note(data, tokens) if tokens else []
    past = []
    for front in GRID:
        points = front_points(data, front, "forgetting_pct")
        on_front = efficient(points)
        past += [f"{front.name} {rate_name(rate)}" for rate, _, _ in points if all(rate != r for r, _, _ in on_front)]
    if past:
        lines.append(
            "- Past the useful range (less domain gain *and* more forgetting than another rate of the same method, "
            f"so left out of the interpolation): {', '.join(past)}."
        )
    rising = []
    for front in GRID:
        points = front_points(data, front, "forgetting_pct")
        top = max(points, key=lambda p: p[1], default=None)
        if len(points) == len(front.rates) and top[0] == max(front.rates):
            below = max((p for p in points if p is not top), key=lambda p: p[1])
            rising.append(
                f"{front.name} (+{top[1] - below[1]:.2f} points of domain-loss gain over {rate_name(below[0])})"
            )
    if rising:
        lines.append(
            f"- Still gaining at the highest rate of its grid: {', '.join(rising)}. A higher rate may reach more "
            "domain gain (at more forgetting); what such a front cannot reach here was not tried, not shown impossible."
        )
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
    for front in GRID:
        probes = _front_values(data, front, "reestimation_seconds")
        steps = _front_values(data, front, "train_seconds")
        if any(probes) and len(probes) == len(steps):
            share = sum(probes) / sum(steps)
            lines.append(
                f"- {front.name}'s importance probes (step-0 rates and refreshes) took "
                f"{sum(probes) / len(probes):.0f} s "
                f"per run on average, {share:.0%} on top of its optimizer-step time, which the time per token "
                "leaves out."
            )
    counts = seed_counts(data)
    if counts and max(counts.values()) == 1:
        lines.append(
            "- One seed so far: no error bars. Fronts that differ by a few tenths of a percent of general loss are "
            "not shown to differ by more than training noise, and the verdicts below may change with a second seed."
        )
    elif counts:
        most = max(counts.values())
        full_set = sum(n == most for n in counts.values())
        share = (
            f"all {len(counts)} rates have {most} seeds"
            if full_set == len(counts)
            else f"{full_set} of {len(counts)} rates so far have {most} seeds, the others fewer"
        )
        lines.append(
            f"- Seeds: each point is the mean over the seeds that ran it; {share}. On the loss plot the bars span "
            "the seeds' values; the spread of a rate run twice is the scale of training noise against which the "
            "fronts' gaps are read."
        )
    if lines:
        lines.append(
            "- The starting point is the instruction-tuned SmolLM2-135M (the only SmolLM2 the package registry ships). "
            "Training on plain running text can first *lower* its loss on other plain text (the model leaves its chat "
            "register) before the domain pulls it away, so a small early drop of the general loss is not a gain in "
            "general ability; the zero-shot benchmarks are the second, independent measure of forgetting."
        )
        lines = ["### Notes", "", *lines, ""]
    return lines


def toy_comparison(data: dict[str, Any], toy_path: Path) -> list[str]:
    """What the toy-model comparison (``compare_methods.py``'s JSON) and the fronts disagree on.

    The toy runs every method at one rate; every real grid contains that rate, so the two are set
    side by side there: forgetting, gain, and forgetting per unit of gain (both in % of the base
    loss), then the method pairs the two order differently.
    """
    from adept.artifacts import read_json
    from adept.config import load_config

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
    from adept.artifacts import write_text

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
    from adept.artifacts import artifact_header, read_json, write_json
    from adept.config import load_config

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
            run_grid(args, cfg, selected, seeds, root, command, record, record_path)
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
