"""The final comparison: each method's best rate on full benchmark sets, paired per item with the base model.

Each front's best rate (the largest mean domain gain over seeds: what a user adapting to the domain picks)
is read from the records of finished sweeps (``--sweep CONFIG``, repeatable: E4's full CPT, LLaMA-Pro and
ADEPT, E1's rules). Every seed's trained model of that rate, and the base model once, is evaluated on:

- every item of the config's general benchmarks but HellaSwag, a seeded 2,000 of HellaSwag
  (``evaluation.limits``), and every item of the domain's multiple-choice set;
- held-out loss on the config's general text (State of the Union, the probe's source), on Austen (a
  source neither probed nor trained on) and on the domain's held-out text, ``--max-blocks`` blocks each.

One ``results.json`` per model under ``--work``, so the work resumes model by model (about 25-40 minutes per
model on 2 CPU cores), seed 0 of every front first; each evaluation, per-item scores included, is also kept in
``docs/results_final_runs.json``, so it outlives its model and its ``--work`` directory. Then
``docs/results_final.md``: per front, gain and forgetting with each accuracy change paired per item against the
base model, seed by seed, and the mean over seeds.

Usage: python benchmarks/final_comparison.py --sweep configs/e4_smollm2.yaml --sweep configs/e1_smollm2.yaml
       [--fronts full,llama-pro,adept,adept-no-stage2] [--seeds 0,1,2] [--max-models N] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from adept.artifacts import read_json, write_text
from adept.benchmarks import paired_difference
from adept.config import load_config
from adept.evaluation import run_evaluation, weighted_loss
from adept.fronts import best_rate, label_of, mean_interval, pooled_items, rate_name
from adept.fronts_report import markdown_table
from adept.run_directory import train_dir
from adept.sweep import RECORD_NAME, report_root, sweep_fronts, sweep_root
from adept.training import FINAL_MODEL_DIR

ROOT = Path(__file__).resolve().parent.parent
SECOND_SOURCE = "data/demo/general/heldout.jsonl"  # Austen: neither the probe's source nor trained on
HELLASWAG_ITEMS = 2000
BASE = "base"


def best_points(configs: list[str], wanted: list[str] | None) -> list[dict[str, Any]]:
    """Per front of the sweeps (first sweep first; a name seen twice is kept once): its best rate and the
    trained model of each seed that ran it."""
    chosen: dict[str, dict[str, Any]] = {}
    for config in configs:
        cfg = load_config(config)
        record_path = report_root(cfg) / RECORD_NAME
        if not record_path.is_file():
            raise FileNotFoundError(f"{record_path}: no record; run adept sweep {config} first")
        record = read_json(record_path, kind="fronts")
        data = {"seeds": {int(s): rows for s, rows in record["runs"].items()}, "base": record["base"]}
        for front in sweep_fronts(cfg, config):
            if front.name in chosen or (wanted and front.name not in wanted):
                continue
            best = best_rate(data, front)
            if best is None:
                continue
            label = label_of(front, best[0])
            models = {
                seed: train_dir(sweep_root(cfg) / f"seed{seed}", label) / FINAL_MODEL_DIR
                for seed, rows in data["seeds"].items()
                if label in rows
            }
            chosen[front.name] = {"front": front.name, "rate": best[0], "label": label, "models": models, "cfg": cfg}
    return list(chosen.values())


def read_record(path: Path) -> dict[str, Any]:
    """The committed evaluations, one model per line (``write_record``): none is lost with its model."""
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(path: Path, record: dict[str, Any]) -> None:
    lines = [f"{json.dumps(key)}: {json.dumps(run, separators=(',', ':'))}" for key, run in sorted(record.items())]
    write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")


def is_evaluated(work: Path, key: str, record: dict[str, Any]) -> bool:
    """Whether ``key`` needs no evaluation: kept in the committed record or cached under ``work``."""
    return key in record or (work / key / "results.json").is_file()


def evaluate_once(work: Path, key: str, model: Path, cfg, args, record: dict[str, Any]) -> dict[str, Any] | None:
    """One model's evaluation, cached as ``work/key/results.json`` and kept in ``record``; None where the model is
    neither evaluated nor on this machine."""
    if key in record:
        return record[key]
    path = work / key / "results.json"
    if not path.is_file():
        if not model.is_dir():
            print(f"skipped {key}: {model} is not here (trained on another machine)")
            return None
        print(f"evaluating {key} ({model})", flush=True)
        run_evaluation(
            [(key.replace("/", ":"), model)],
            work / key,
            general=[*cfg.data.general_heldout, args.second_source],
            domain=cfg.data.domain_heldout,
            general_benchmarks=cfg.data.general_benchmarks,
            domain_benchmarks=cfg.data.domain_benchmarks,
            block_size=cfg.data.block_size,
            batch_size=cfg.evaluation.batch_size,
            max_blocks=args.max_blocks,
            limit=args.limit,
            limits={} if args.limit else {"hellaswag": HELLASWAG_ITEMS},
            device="cpu",
            summaries={key.replace("/", ":"): None},
            seed=cfg.evaluation.benchmark_seed,
        )
    record[key] = read_json(path, kind="evaluation")["runs"][0]
    return record[key]


def loss_of(run: dict[str, Any], path: str) -> float | None:
    return next((e["loss"] for e in run["perplexity"].values() if e["path"] == str(path)), None)


def changes(run: dict[str, Any], base: dict[str, Any], cfg, second_source: str) -> dict[str, Any]:
    """A model's gain and forgetting against the base model, each accuracy paired per item."""

    def pct(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else 100 * (a / b - 1)

    general = [str(p) for p in cfg.data.general_heldout]
    first = general[0] if general else None
    out = {
        "gain_pct": -pct(weighted_loss(run["perplexity"], "domain"), weighted_loss(base["perplexity"], "domain")),
        "probe_source_pct": pct(loss_of(run, first), loss_of(base, first)) if first else None,
        "second_source_pct": pct(loss_of(run, second_source), loss_of(base, second_source)),
    }
    for side in ("general", "domain"):
        out[f"{side}_acc"] = paired_difference(
            pooled_items(base["benchmarks"], side), pooled_items(run["benchmarks"], side), "score"
        )
    out["per_benchmark"] = {
        name: paired_difference(
            pooled_items({name: base["benchmarks"][name]}, entry["domain"]),
            pooled_items({name: entry}, entry["domain"]),
            "score",
        )
        for name, entry in run["benchmarks"].items()
        if name in base["benchmarks"]
    }
    return out


def over_seeds(values: list[float]) -> str:
    """Mean over seeds, with a 95% t-interval from two seeds on."""
    if not values:
        return "–"
    mean, half = mean_interval(values)
    if half is None:
        return f"{mean:+.2f} (1 seed)"
    return f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n={len(values)})"


def measure(change: dict[str, Any], key: str) -> float | None:
    """One measure of a model's change, accuracies in points (``per_benchmark:NAME`` for one benchmark)."""
    if key.startswith("per_benchmark:"):
        value = change["per_benchmark"].get(key.split(":", 1)[1])
    else:
        value = change[key]
    if isinstance(value, dict):
        return 100 * value["diff"]
    return value


# (column, key, better when): what the method-against-method table compares, seed by seed.
MEASURES = [
    ("domain-loss gain %", "gain_pct", "higher"),
    ("general loss Δ% (probe's source)", "probe_source_pct", "lower"),
    ("general loss Δ% (Austen)", "second_source_pct", "lower"),
    ("general accuracy Δ pts", "general_acc", "higher"),
    ("HellaSwag Δ pts", "per_benchmark:hellaswag", "higher"),
    ("domain accuracy Δ pts", "domain_acc", "higher"),
]
SUBJECT = "adept"


def gap_cell(a: dict[int, dict], b: dict[int, dict], key: str, better: str) -> str:
    """a minus b over the seeds both have, with its 95% t-interval and what it says."""
    pairs = [(measure(a[s], key), measure(b[s], key)) for s in sorted(set(a) & set(b))]
    diffs = [x - y for x, y in pairs if x is not None and y is not None]
    if not diffs:
        return "–"
    mean, half = mean_interval(diffs)
    if half is None:
        return f"{mean:+.2f} (1 seed)"
    if abs(mean) <= half:
        word = "no difference"
    else:
        word = "better" if (mean > 0) == (better == "higher") else "worse"
    return f"{word}, {mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n={len(diffs)})"


def against_rows(results: dict, subject: str) -> list[list[str]]:
    """``subject`` against every other method, each measure's seed-paired difference over seeds."""
    if subject not in results:
        return []
    return [
        [f"{subject} − {other}", *(gap_cell(results[subject], rows, key, better) for _, key, better in MEASURES)]
        for other, rows in results.items()
        if other != subject
    ]


def paired_cell(diff: dict[str, Any] | None) -> str:
    if diff is None:
        return "–"
    ci = f" [{100 * diff['ci'][0]:+.1f}, {100 * diff['ci'][1]:+.1f}]" if diff["ci"] else ""
    return f"{100 * diff['diff']:+.1f}{ci} (n={diff['n']})"


def status(points: list[dict[str, Any]], results: dict, record: dict[str, Any]) -> str:
    done = sum(len(rows) for rows in results.values())
    total = sum(len(point["models"]) for point in points)
    seconds = [run["seconds"] for run in record.values() if run.get("seconds")]
    text = f"**Status: {done} of {total} trained models evaluated, and the base model.**"
    if seconds:
        text += (
            f" Evaluation time: {sum(seconds) / 3600:.1f} hours on 2 CPU cores, "
            f"{min(seconds) / 60:.0f}-{max(seconds) / 60:.0f} minutes a model."
        )
    return text if done == total else text + " Means over fewer seeds than trained are provisional."


def page(
    points: list[dict[str, Any]], base: dict[str, Any], results: dict, record: dict[str, Any], command: str
) -> list[str]:
    seed_rows, mean_rows = [], []
    for point in points:
        rows = results.get(point["front"], {})
        for seed, change in sorted(rows.items()):
            seed_rows.append(
                [
                    point["front"],
                    rate_name(point["rate"]),
                    str(seed),
                    f"{change['gain_pct']:.2f}",
                    f"{change['probe_source_pct']:+.2f}",
                    f"{change['second_source_pct']:+.2f}",
                    paired_cell(change["general_acc"]),
                    paired_cell(change["domain_acc"]),
                ]
            )
        values = list(rows.values())
        means = [over_seeds([v for v in (measure(c, key) for c in values) if v is not None]) for _, key, _ in MEASURES]
        mean_rows.append([point["front"], rate_name(point["rate"]), *means])
    names = sorted({name for rows in results.values() for change in rows.values() for name in change["per_benchmark"]})
    bench_rows, bench_means = [], []
    for point in points:
        rows = results.get(point["front"], {})
        for seed, change in sorted(rows.items()):
            cells = [paired_cell(change["per_benchmark"].get(name)) for name in names]
            bench_rows.append([point["front"], str(seed), *cells])
        if rows:
            values = [[measure(c, f"per_benchmark:{name}") for c in rows.values()] for name in names]
            cells = [over_seeds([v for v in column if v is not None]) for column in values]
            bench_means.append([point["front"], rate_name(point["rate"]), *cells])
    accuracy = {name: entry.get("acc_norm") or entry.get("acc") for name, entry in base["benchmarks"].items()}
    sizes = {name: entry.get("n") for name, entry in base["benchmarks"].items()}
    return [
        "# The final comparison: each method's best rate on full benchmark sets",
        "",
        "Do the fronts' verdicts hold on every benchmark item? Each method at the rate of its largest mean domain "
        "gain (what a user adapting to the domain picks), against the base model: domain gain, general loss on "
        "the probe's source and on a source never probed or trained on, and accuracy paired per item.",
        "",
        *markdown_table(["method", "best rate", *(name for name, _, _ in MEASURES)], mean_rows, "ll" + "r" * 6),
        "",
        "Means over seeds with 95% t-intervals over seeds; an interval that holds 0 is no difference. "
        f"Regenerate: `{command}` (resumable model by model).",
        "",
        status(points, results, record),
        "",
        f"## {SUBJECT} against each other method",
        "",
        "Each measure's difference, seed by seed (seed i of one method against seed i of the other), with its 95% "
        "t-interval over seeds: better or worse for the first method where the interval excludes 0. Each method "
        "is at its own best-gain rate, so the gains differ; the fronts' pages compare at matched gain.",
        "",
        *markdown_table(["methods", *(name for name, _, _ in MEASURES)], against_rows(results, SUBJECT), "l" + "r" * 6),
        "",
        "## Seed by seed, paired per item with the base model",
        "",
        "Accuracy changes in points: every item of each benchmark's validation split (the split shipped here) but "
        f"HellaSwag's (a seeded {HELLASWAG_ITEMS:,}), pooled, each item scored against the base model's score on "
        "it (normal 95% interval).",
        "",
        *markdown_table(
            ["method", "rate", "seed", "gain %", "SOTU loss Δ%", "Austen loss Δ%", "general acc Δ", "domain acc Δ"],
            seed_rows,
            "llrrrrrr",
        ),
        "",
        "## Per benchmark",
        "",
        "Base model: "
        + ", ".join(f"{name} {100 * acc:.1f}% of {sizes[name]}" for name, acc in accuracy.items() if acc is not None)
        + ".",
        "",
        "Means over seeds, points, with 95% t-intervals over seeds:",
        "",
        *markdown_table(["method", "rate", *names], bench_means, "ll" + "r" * len(names)),
        "",
        "Seed by seed, paired per item (normal 95% interval):",
        "",
        *markdown_table(["method", "seed", *names], bench_rows, "ll" + "r" * len(names)),
        "",
    ]


def regeneration_args(argv: list[str] | None) -> list[str]:
    """The arguments given, less ``--max-models`` (how much of it one sitting ran, not how to regenerate it)."""
    given = list(sys.argv[1:] if argv is None else argv)
    kept = []
    while given:
        arg = given.pop(0)
        if arg == "--max-models":
            given = given[1:]
        elif not arg.startswith("--max-models="):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", action="append", required=True, help="A sweep config whose record is done")
    parser.add_argument("--fronts", default="", help="Comma-separated fronts (default: every front of the sweeps)")
    parser.add_argument("--seeds", default="", help="Comma-separated seeds (default: every seed that ran)")
    parser.add_argument("--work", default="runs/final_comparison")
    parser.add_argument("--docs", default="docs/results_final.md")
    parser.add_argument("--second-source", default=SECOND_SOURCE)
    parser.add_argument("--max-blocks", type=int, default=64)
    parser.add_argument("--max-models", type=int, default=None, help="Evaluate at most N models in this sitting")
    parser.add_argument("--limit", type=int, default=None, help="Items per benchmark (a smoke run; default: all)")
    args = parser.parse_args(argv)
    wanted = [f for f in args.fronts.split(",") if f] or None
    seeds = {int(s) for s in args.seeds.split(",") if s} or None
    points = best_points(args.sweep, wanted)
    if not points:
        raise SystemExit("no front with a finished rate in the sweeps' records")
    work = Path(args.work)
    cfg = points[0]["cfg"]
    docs = Path(args.docs)
    record_path = docs.with_name(f"{docs.stem}_runs.json")
    record = read_record(record_path)
    base = evaluate_once(work, BASE, Path(cfg.model), cfg, args, record)
    if base is None:
        raise SystemExit(f"{cfg.model}: the base model is not here")
    # Seed by seed, every front of a seed before the next seed: a stopped sitting leaves whole seeds compared.
    order = sorted(
        ((seed, i, point, model) for i, point in enumerate(points) for seed, model in point["models"].items()),
        key=lambda entry: entry[:2],
    )
    evaluated, results = 0, {}
    for seed, _, point, model in order:
        if seeds and seed not in seeds:
            continue
        key = f"seed{seed}/{point['label']}"
        done = is_evaluated(work, key, record)
        if not done and args.max_models is not None and evaluated >= args.max_models:
            continue
        evaluated += not done
        run = evaluate_once(work, key, model, point["cfg"], args, record)
        if run is not None:
            results.setdefault(point["front"], {})[seed] = changes(run, base, point["cfg"], args.second_source)
    command = "python benchmarks/final_comparison.py " + " ".join(regeneration_args(argv))
    write_record(record_path, record)
    write_text(docs, "\n".join(page(points, base, results, record, command)))
    print(f"written: {docs}, {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
