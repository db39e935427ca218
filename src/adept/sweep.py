"""`adept sweep`: each method at each learning rate of its grid and each seed, then the fronts.

A learning rate moves every method along a front of domain gain against general forgetting, so
only fronts compare methods fairly. A sweep is a set of points (front, rate, seed); each point is
one `adept run` of the config with the point added as a ``train.variants`` label
(``adept@1e-3``), trained into the seed's run directory ``OUTPUT/seed<N>``, where importance,
expansion and the base model's evaluation are shared by every point. A finished point is skipped,
so a sweep stops and resumes point by point. The fronts are then read from the run directories
(``adept.fronts``) and written as ``OUTPUT/fronts.json`` and a report (``adept.fronts_report``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adept.artifacts import read_json, write_json
from adept.config import METHODS, ConfigError, PipelineConfig, load_config, nearest
from adept.fronts import (
    MACHINE_NAME,
    Front,
    base_summary,
    best_rate,
    collect,
    dial_front,
    dial_points_done,
    is_complete,
    is_done,
    label_of,
    rate_name,
)
from adept.fronts_report import write_fronts_report
from adept.pipeline import Pipeline, run_pipeline
from adept.run_directory import dial_label, train_dir
from adept.sweep_files import machine_info, prune_models, tidy
from adept.training import FINAL_MODEL_DIR

logger = logging.getLogger(__name__)

RECORD_NAME = "fronts.json"  # OUTPUT/fronts.json: every finished point's row, enough to continue elsewhere

# The 1-3-10 ladder a default grid steps along: a method's default rate and one rung either side.
RATE_LADDER = (1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def default_rates(rate: float) -> tuple[float, ...]:
    """``rate`` and its neighbours on ``RATE_LADDER`` (a third and three times it off the ladder)."""
    for index, rung in enumerate(RATE_LADDER):
        if abs(rung - rate) <= 1e-9 * rate:
            return RATE_LADDER[max(0, index - 1) : index + 2]
    return (rate / 3, rate, rate * 3)


def sweep_fronts(cfg: PipelineConfig, source: str = "the config") -> list[Front]:
    """The fronts of ``cfg.sweep``: each method or variant label with its rate grid and replay share."""
    names = cfg.sweep.methods or cfg.train.methods
    known = [*cfg.train.methods, *cfg.train.variants]
    for name in names:
        if name not in METHODS and name not in cfg.train.variants:
            near = nearest(name, [*METHODS, *known])
            hint = f" (did you mean '{near}'?)" if near else ""
            raise ConfigError(
                f"{source}: 'sweep.methods' names '{name}', which is neither a method nor a variant{hint}"
            )
    for name, rates in cfg.sweep.rates.items():
        if name not in names:
            raise ConfigError(f"{source}: 'sweep.rates.{name}': not a swept method (sweep.methods: {', '.join(names)})")
        if not rates or any(not rate > 0 for rate in rates):
            raise ConfigError(f"{source}: 'sweep.rates.{name}' must be a non-empty list of positive learning rates")
        labels = [rate_name(rate) for rate in rates]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{source}: 'sweep.rates.{name}': {rates} name the same rate twice ({labels})")
    fronts = []
    for name in names:
        settings = cfg.method_settings(name, source)
        rates = cfg.sweep.rates.get(name) or default_rates(float(settings.training_args["learning_rate"]))
        fronts.append(Front(name, settings.method, tuple(sorted(rates)), settings.replay_ratio))
    reference = cfg.sweep.reference
    if reference is not None and reference not in names:
        raise ConfigError(f"{source}: 'sweep.reference' is '{reference}', not a swept method ({', '.join(names)})")
    return fronts


def reference_front(cfg: PipelineConfig, fronts: Sequence[Front]) -> str:
    """The front others are matched against: ``sweep.reference``, else full CPT if swept, else the first."""
    if cfg.sweep.reference:
        return cfg.sweep.reference
    return "full" if any(f.name == "full" for f in fronts) else fronts[0].name


def sweep_root(cfg: PipelineConfig) -> Path:
    """Where the sweep's run directories live (``seed<N>``)."""
    return Path(cfg.sweep.output) if cfg.sweep.output else Path(cfg.run_dir) / "sweep"


def report_root(cfg: PipelineConfig) -> Path:
    """Where the sweep's record (fronts.json) and report go: its own, even where run directories are shared."""
    return Path(cfg.sweep.report_dir) if cfg.sweep.report_dir else sweep_root(cfg)


def point_steps(front: Front, cfg: PipelineConfig) -> int:
    """Optimizer steps of a point: the front's, or more for replay, which adds steps instead of
    taking them, so that every point of a sweep sees as many domain tokens. -1: one epoch."""
    name = front.name if front.name in cfg.train.variants or front.name == front.method else front.method
    steps = int(cfg.method_settings(name).training_args["max_steps"])
    return math.ceil(steps / (1 - front.replay_ratio)) if steps > 0 and front.replay_ratio else steps


def point_variant(front: Front, rate: float, cfg: PipelineConfig, extra: dict[str, Any] | None = None) -> dict:
    """The ``train.variants`` entry of a point: the front's own variant, its method and ``rate``,
    replay's extra steps, and ``extra`` training arguments."""
    variant = json.loads(json.dumps(cfg.train.variants.get(front.name, {})))
    variant["method"] = front.method
    args = variant.setdefault("training_args", {})
    args["learning_rate"] = rate
    if front.replay_ratio:
        variant["replay_ratio"] = front.replay_ratio
        steps = point_steps(front, cfg)
        if steps > 0:
            args["max_steps"] = steps
    args.update(extra or {})
    return variant


def point_overrides(front: Front, rate: float, cfg: PipelineConfig, extra: dict[str, Any] | None = None) -> list[str]:
    """``--set`` overrides that make a config train exactly one point."""
    label = label_of(front, rate)
    variant = point_variant(front, rate, cfg, extra)
    return [f"train.methods={json.dumps([label])}", f"train.variants.{label}={json.dumps(variant)}"]


def seed_overrides(root: Path, seed: int, probe_per_seed: bool = False) -> list[str]:
    """The seed's run directory and its training (and data-order) seed; its probe draw too if asked."""
    overrides = [
        f"train.training_args.seed={seed}",
        f"train.training_args.data_seed={seed}",
        f"run_dir={root / f'seed{seed}'}",
    ]
    return overrides + ([f"importance.seed={seed}"] if probe_per_seed else [])


def points(fronts: Sequence[Front], seeds: Sequence[int]) -> list[tuple[int, Front, float]]:
    """Run order: each front's rates from its middle outwards (the default rate first), every seed of a
    rate before the next rate, so a partial sweep already has every front's central point on every seed."""
    order = []
    for offset in range(max(len(f.rates) for f in fronts)):
        for seed in seeds:
            for front in fronts:
                middle = (len(front.rates) - 1) // 2
                ring = sorted(range(len(front.rates)), key=lambda i: (abs(i - middle), -i))
                if offset < len(ring):
                    order.append((seed, front, front.rates[ring[offset]]))
    return order


def run_points(
    config: str | os.PathLike,
    overrides: Sequence[str],
    todo: Sequence[tuple[int, Front, float]],
    root: Path,
    *,
    command: str,
    max_runs: int | None = None,
    keep_checkpoints: bool = False,
    keep_model: bool = True,
    probe_per_seed: bool = False,
    skip: Callable[[int, str], bool] = lambda seed, label: False,
    before_seed: Callable[[int], None] = lambda seed: None,
    extra_args: Callable[[Front, float, PipelineConfig], dict[str, Any]] = lambda front, rate, cfg: {},
) -> int:
    """Train every point of ``todo`` not finished yet, in order; returns how many were trained.

    ``skip`` names points finished elsewhere (a committed record); ``before_seed`` runs once before
    the first point trained in a seed; ``extra_args`` adds training arguments to a point.
    """
    cfg = load_config(config, list(overrides))
    ran, started_seeds = 0, set()
    left = [
        (s, f, r) for s, f, r in todo if not is_done(root / f"seed{s}", label_of(f, r)) and not skip(s, label_of(f, r))
    ]
    for seed, front, rate in left:
        run_dir = root / f"seed{seed}"
        label = label_of(front, rate)
        if max_runs is not None and ran >= max_runs:
            logger.info("--max-runs %d reached; run the sweep again to continue", max_runs)
            break
        if seed not in started_seeds:
            before_seed(seed)
            started_seeds.add(seed)
        point = point_overrides(front, rate, cfg, extra_args(front, rate, cfg))
        point_cfg = load_config(config, [*overrides, *seed_overrides(root, seed, probe_per_seed), *point])
        logger.info("sweep point %d of %d left: %s, seed %d -> %s", ran + 1, len(left), label, seed, run_dir)
        began = time.monotonic()
        run_pipeline(point_cfg)
        tidy(run_dir, label, keep_checkpoints, keep_model)
        write_json(
            train_dir(run_dir, label) / MACHINE_NAME,
            {"seed": seed, "command": command, "seconds": time.monotonic() - began, **machine_info(point_cfg.device)},
        )
        ran += 1
    return ran


def plan(todo: Sequence[tuple[int, Front, float]], root: Path) -> tuple[list[str], float | None]:
    """Lines listing every point and whether it is done, and an estimate of the seconds left:
    the mean time of the points finished so far times the points left (None before the first)."""
    lines, seconds, left = [], [], 0
    for seed, front, rate in todo:
        label = label_of(front, rate)
        machine = train_dir(root / f"seed{seed}", label) / MACHINE_NAME
        done = is_done(root / f"seed{seed}", label)
        if done and machine.is_file():
            seconds.append(read_json(machine)["seconds"])
        left += not done
        lines.append(f"seed {seed}  {label:24s} {'done' if done else 'todo'}")
    estimate = sum(seconds) / len(seconds) * left if seconds else None
    return lines, estimate


# --- the record: points an earlier sitting reported -----------------------------------------
# Run directories hold gigabytes and stay on the machine that trained them; a sweep's fronts.json
# (or a docs page's JSON) is small enough to share or commit. Reading its rows back lets a sweep
# continue on another machine without retraining what is done, as long as the record was made with
# the same config, overrides and budget, and from the same base model (checked against the base
# evaluation made here).

BASE_TOLERANCE = 1e-4  # relative; the same model on the same data evaluates alike far closer than this


class RecordError(ValueError):
    """A record that cannot be continued here; the message names the file and key."""


def read_record(
    path: Path, config: str, overrides: Sequence[str], cfg: PipelineConfig, grid: dict[str, tuple[Front, float]]
) -> dict[str, Any] | None:
    """The fronts record at ``path``, or None where there is none; refuses one made with another
    config, other ``--set`` overrides or another number of steps per point."""
    if not path.is_file():
        return None
    record = read_json(path, kind="fronts")
    fix = "rerun with the record's settings, or remove the file to start afresh"
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
            steps = point_steps(grid[label][0], cfg)
            if row.get("steps") != steps:
                raise RecordError(
                    f"{path}: runs.{seed}.{label}.steps: recorded {row.get('steps')}, this config trains {steps}; {fix}"
                )
    return record


def check_base(recorded: dict[str, Any], here: dict[str, Any], path: Path, seed: int) -> None:
    """Refuse a record whose base evaluation differs from the one made here: every row is a change from it."""
    why = "the recorded runs started from another model or data: remove the file to start afresh"
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


def run_sweep(
    config: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    dry_run: bool = False,
    max_runs: int | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Path] | None:
    """Train the sweep's points not finished yet (at most ``max_runs``), then write its fronts report.

    With ``dry_run``, print the points, what is done and an estimate of the time left, and train nothing.
    """
    overrides = list(overrides)
    cfg = load_config(config, overrides)
    fronts = sweep_fronts(cfg, str(config))
    root = sweep_root(cfg)
    todo = points(fronts, cfg.sweep.seeds)
    if dry_run:
        lines, estimate = plan(todo, root)
        for line in lines:
            echo(line)
        left = sum(line.endswith("todo") for line in lines)
        if estimate is None:
            echo(f"{left} of {len(lines)} points to train; time unknown until the first point finishes")
        else:
            echo(f"{left} of {len(lines)} points to train, about {estimate / 3600:.1f} h at the finished points' pace")
        if cfg.sweep.alphas:
            dials = len(fronts) * len(cfg.sweep.seeds) * len(cfg.sweep.alphas)
            echo(f"then up to {dials} dial points (each front's best rate, every seed, each alpha), evaluation only")
        return None
    command = shlex.join(["adept", "sweep", str(config), *(part for o in overrides for part in ("--set", o))])
    grid = {label_of(front, rate): (front, rate) for front in fronts for rate in front.rates}
    grid |= {dial_label(label, a): point for label, point in grid.items() for a in cfg.sweep.alphas}
    record_path = report_root(cfg) / RECORD_NAME
    # The sweep's own keys (seeds, rates, output) do not change what a point computes.
    settings = {"config": str(config), "overrides": [o for o in overrides if not o.startswith("sweep.")]}
    record = read_record(record_path, settings["config"], settings["overrides"], cfg, grid)
    recorded = recorded_labels(record)

    def check_seed(seed: int) -> None:  # a record's rows are changes from its base: it must be this one
        if record is not None and str(seed) in record.get("base", {}):
            results = Pipeline(load_config(config, [*overrides, *seed_overrides(root, seed)])).evaluate_base()
            here = base_summary(read_json(results, kind="evaluation")["runs"][0])
            check_base(record["base"][str(seed)], here, record_path, seed)

    ran = run_points(
        config,
        overrides,
        todo,
        root,
        command=command,
        max_runs=max_runs,
        keep_checkpoints=cfg.sweep.keep_checkpoints,
        keep_model=cfg.sweep.keep_models != "none",
        probe_per_seed=cfg.sweep.probe_per_seed,
        skip=lambda seed, label: (seed, label) in recorded,
        before_seed=check_seed,
    )
    dials = [dial_front(f, rate, cfg.sweep.alphas) for f in fronts for rate in f.rates] if cfg.sweep.alphas else []
    data = collect(root, cfg.sweep.seeds, [*fronts, *dials])
    if dials and (max_runs is None or ran < max_runs):
        run_dials(config, overrides, fronts, data, root, cfg, None if max_runs is None else max_runs - ran)
        data = collect(root, cfg.sweep.seeds, [*fronts, *dials])
    if cfg.sweep.keep_models == "best":
        prune_models(root, data, fronts, dials, cfg.sweep.seeds)
    if record is not None:
        merge_record(data, record, record_path, cfg.sweep.seeds)
    if not any(data["seeds"].values()):
        raise FileNotFoundError(f"{root}: no finished point to report yet")
    shown = [*fronts, *(d for d in dials if dial_points_done(data, d))]
    done = sum(len(rows) for rows in data["seeds"].values())
    meta = [f"config: {config}", f"sweep: {root}", f"{done} of {len(todo)} points done", f"command: {command}"]
    return write_fronts_report(data, shown, reference_front(cfg, fronts), report_root(cfg), meta, settings)


def run_dials(
    config: str | os.PathLike,
    overrides: Sequence[str],
    fronts: Sequence[Front],
    data: dict[str, Any],
    root: Path,
    cfg: PipelineConfig,
    max_runs: int | None,
) -> int:
    """The forgetting dial: once a front has every rate on every seed, its best-gain rate's run of each
    seed moved back towards its start with each of ``sweep.alphas`` and evaluated; returns how many."""
    seeds, ran = cfg.sweep.seeds, 0
    for front in fronts:
        if not is_complete(data, front, seeds):
            continue
        rate, _ = best_rate(data, front)
        label = label_of(front, rate)
        for seed in seeds:
            run_dir = root / f"seed{seed}"
            missing = [a for a in cfg.sweep.alphas if not is_done(run_dir, dial_label(label, a))]
            if not missing or not (train_dir(run_dir, label) / FINAL_MODEL_DIR).is_dir():
                continue  # dialled already, or trained on another machine (its record's row is here)
            if max_runs is not None and ran >= max_runs:
                return ran
            point = point_overrides(front, rate, cfg)
            point_cfg = load_config(config, [*overrides, *seed_overrides(root, seed, cfg.sweep.probe_per_seed), *point])
            _, pipeline = run_pipeline(point_cfg)  # every stage of the trained point is up to date: skipped
            for alpha in missing:
                if max_runs is not None and ran >= max_runs:
                    return ran
                logger.info("sweep dial %s, seed %d", dial_label(label, alpha), seed)
                pipeline.dial_stage(label, alpha)
                ran += 1
    return ran
