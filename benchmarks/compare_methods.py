"""Every method side by side, several seeds: the paper's main comparison at small scale.

Runs the `adept run` pipeline in-process once per seed (``RUN_ROOT/seed<N>``), every method
label from the same base model and data on the same domain-token budget, then aggregates the
seeds' ``eval/results.json`` into ``docs/results.md`` (what was run, a mean ± std table, the
targets below checked with numbers, a forgetting vs. gain scatter plot) and ``docs/results.json``.
The pipeline skips finished stages, so rerunning resumes; ``--report-only`` only rebuilds the docs.

Targets, judged on the means over seeds (per-seed counts are shown next to each):

1. ADEPT's general held-out loss increase is at most 10% of full CPT's increase;
2. ADEPT's domain held-out loss decrease is at least full CPT's;
3. ADEPT has a larger domain gain than llama-pro and adept-no-stage2 at equal or lower forgetting;
4. time per token and peak memory relative to full CPT are reported for every method.

Methods that replay general text (``replay_ratio > 0``) get ``max_steps / (1 - replay_ratio)``
steps so that they see as many domain tokens as the others (``--same-steps`` turns this off).
Everything below the ``<!-- knob-sweep -->`` line of the docs file is left as it is.

Usage: python benchmarks/compare_methods.py [--seeds 0,1,2] [--methods adept,full] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from adept.sweep_files import machine_info

TARGET_FORGETTING_SHARE = 0.10
FULL = "full"
ADEPT = "adept"
BASE = "base"
RIVALS = ("llama-pro", "adept-no-stage2")
MARKER = "<!-- knob-sweep -->"
KNOB_PLACEHOLDER = """
## Knob sweep

_Not run yet._ This section is kept as it is when `benchmarks/compare_methods.py` rewrites the
part of this file above the marker.
"""
MACHINE_NAME = "machine.json"

# (key, header, format, reading) for the table; "ratio" keys are computed per seed against full.
COLUMNS = [
    ("general_loss_change_pct", "general loss Δ%", "+.2f", "forgetting: lower is better"),
    ("domain_loss_change_pct", "domain loss Δ%", "+.2f", "gain: lower is better"),
    ("general_acc_change", "general acc Δ", "+.3f", ""),
    ("domain_acc_change", "domain acc Δ", "+.3f", ""),
    ("trainable_share", "trainable %", ".1%", ""),
    ("time_per_token_vs_full", "time/token ÷ full", ".2f", "full's tokens/s ÷ this method's, same seed"),
    ("peak_memory_vs_full", "peak mem ÷ full", ".2f", "same seed"),
    ("wall_seconds", "train wall s", ".0f", ""),
    ("peak_memory_gib", "peak mem GiB", ".2f", ""),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/compare.yaml", help="pipeline YAML (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument(
        "--methods", default=None, help="comma-separated method labels (default: train.methods of the config)"
    )
    parser.add_argument(
        "--output-root", default="runs/compare", help="one run directory per seed under it (default: %(default)s)"
    )
    parser.add_argument(
        "--docs",
        default="docs/results.md",
        help="Markdown written here, with a .json twin and a PNG (default: %(default)s)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --set train.training_args.max_steps=200",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild the docs from the existing run directories, train nothing"
    )
    parser.add_argument(
        "--same-steps",
        action="store_true",
        help="do not give replay methods extra steps (they then see fewer domain tokens)",
    )
    return parser.parse_args(argv)


# --- running --------------------------------------------------------------------------------


def replay_budget_overrides(cfg) -> list[str]:
    """Extra steps for replay labels so that their domain tokens match the shared budget.

    Only labels whose ``max_steps`` is the shared one are changed; one set explicitly is kept.
    """
    from adept.config import DEFAULT_TRAINING_ARGS

    shared = {**DEFAULT_TRAINING_ARGS, **cfg.train.training_args}["max_steps"]
    overrides = []
    for label in cfg.train.methods:
        settings = cfg.method_settings(label)
        ratio = settings.replay_ratio
        if ratio > 0 and settings.training_args["max_steps"] == shared:
            steps = math.ceil(shared / (1 - ratio))
            overrides.append(f"train.variants.{label}.training_args.max_steps={steps}")
    return overrides


def seed_overrides(root: Path, seed: int) -> list[str]:
    return [
        f"train.training_args.seed={seed}",
        f"train.training_args.data_seed={seed}",
        f"importance.seed={seed}",
        f"run_dir={root / f'seed{seed}'}",
    ]


def run_seeds(args: argparse.Namespace, seeds: list[int], root: Path, command: str) -> None:
    from adept.artifacts import write_json
    from adept.config import load_config
    from adept.pipeline import run_pipeline

    base_overrides = list(args.overrides)
    if args.methods:
        base_overrides.append(f"train.methods=[{args.methods}]")
    budget = [] if args.same_steps else replay_budget_overrides(load_config(args.config, base_overrides))
    for seed in seeds:
        cfg = load_config(args.config, budget + base_overrides + seed_overrides(root, seed))
        print(f"== seed {seed}: {', '.join(cfg.train.methods)} -> {cfg.run_dir}", flush=True)
        _, pipeline = run_pipeline(cfg)
        machine = Path(cfg.run_dir) / MACHINE_NAME
        if not machine.is_file() or any(name.startswith("train:") for name in pipeline.ran):
            write_json(machine, {"seed": seed, "command": command, **machine_info(cfg.device)})


# --- aggregation ----------------------------------------------------------------------------


def read_seed(run_dir: Path) -> dict[str, Any]:
    """One seed's comparison rows (by label), resolved config and machine record."""
    from adept.artifacts import read_json
    from adept.config import load_config
    from adept.evaluation import read_results
    from adept.pipeline import comparison_path

    results = read_results(comparison_path(run_dir))
    machine = run_dir / MACHINE_NAME
    return {
        "rows": {row["label"]: row for row in results["comparison"]},
        "base": results.get("base", BASE),
        "config": load_config(run_dir / "config.yaml"),
        "machine": read_json(machine) if machine.is_file() else None,
    }


def seed_values(rows: dict[str, dict[str, Any]], label: str) -> dict[str, float | None]:
    """The table's quantities for one label in one seed (ratios against full in the same seed)."""
    row = rows[label]
    values = {key: row.get(key) for key, *_ in COLUMNS}
    values["general_loss_change"] = row.get("general_loss_change")
    values["domain_loss_change"] = row.get("domain_loss_change")
    values["tokens_per_second"] = row.get("tokens_per_second")
    peak = row.get("peak_memory_bytes")
    values["peak_memory_gib"] = None if peak is None else peak / 2**30
    full = rows.get(FULL, {})
    tps, full_tps = row.get("tokens_per_second"), full.get("tokens_per_second")
    values["time_per_token_vs_full"] = full_tps / tps if tps and full_tps else None
    full_peak = full.get("peak_memory_bytes")
    values["peak_memory_vs_full"] = peak / full_peak if peak and full_peak else None
    return values


def summarize(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (None below two values) and n, ignoring missing values."""
    present = [v for v in values if v is not None]
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,
        "n": len(present),
        "values": values,
    }


def aggregate(seeds: dict[int, dict[str, Any]], labels: list[str]) -> dict[str, dict[str, Any]]:
    stats = {}
    for label in labels:
        per_seed = [seed_values(data["rows"], label) for data in seeds.values() if label in data["rows"]]
        keys = per_seed[0].keys() if per_seed else []
        stats[label] = {key: summarize([values[key] for values in per_seed]) for key in keys}
        stats[label]["seeds"] = [seed for seed, data in seeds.items() if label in data["rows"]]
        stats[label]["method"] = next(data["rows"][label]["method"] for data in seeds.values() if label in data["rows"])
    return stats


def _mean(stats: dict[str, Any], label: str, key: str) -> float | None:
    return stats.get(label, {}).get(key, {}).get("mean")


def _versus(margin: float, ahead: str, behind: str, equal: str) -> str:
    """``margin`` > 0 is in ADEPT's favour."""
    if margin == 0:
        return equal
    return f"{ahead if margin > 0 else behind} by {abs(margin):.4f}"


def _paired(seeds: dict[int, dict[str, Any]], labels: tuple[str, ...], test) -> tuple[int, int]:
    """In how many seeds (having every label) ``test(rows)`` holds, out of how many."""
    usable = [data["rows"] for data in seeds.values() if all(label in data["rows"] for label in labels)]
    return sum(bool(test(rows)) for rows in usable), len(usable)


def check_targets(stats: dict[str, Any], seeds: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """The four targets, each with ``met`` (True, False or None when it cannot be judged) and a sentence."""
    targets = []
    g = lambda label: _mean(stats, label, "general_loss_change")  # noqa: E731
    d = lambda label: _mean(stats, label, "domain_loss_change")  # noqa: E731
    have = ADEPT in stats and FULL in stats

    name = f"ADEPT's general loss increase ≤ {TARGET_FORGETTING_SHARE:.0%} of full CPT's"
    if not have or g(ADEPT) is None or g(FULL) is None:
        targets.append({"target": name, "met": None, "detail": "not measured (needs adept and full)"})
    elif g(FULL) <= 0:
        targets.append(
            {
                "target": name,
                "met": None,
                "detail": (
                    f"undefined: full CPT did not raise the general loss (mean change {g(FULL):+.4f}); ADEPT's "
                    f"change {g(ADEPT):+.4f}"
                ),
            }
        )
    else:
        share = g(ADEPT) / g(FULL)
        wins, n = _paired(
            seeds,
            (ADEPT, FULL),
            lambda r: r[ADEPT]["general_loss_change"] <= TARGET_FORGETTING_SHARE * r[FULL]["general_loss_change"],
        )
        met = g(ADEPT) <= TARGET_FORGETTING_SHARE * g(FULL)
        targets.append(
            {
                "target": name,
                "met": met,
                "value": share,
                "seeds_met": [wins, n],
                "detail": (
                    f"ADEPT {g(ADEPT):+.4f} vs full {g(FULL):+.4f} nats: {share:.1%} of full's increase "
                    f"(target ≤ {TARGET_FORGETTING_SHARE:.0%}, {'met' if met else 'missed'} by "
                    f"{abs(share - TARGET_FORGETTING_SHARE) * 100:.1f} points); per seed {wins}/{n}"
                ),
            }
        )

    name = "ADEPT's domain loss decrease ≥ full CPT's"
    if not have or d(ADEPT) is None or d(FULL) is None:
        targets.append({"target": name, "met": None, "detail": "not measured (needs adept and full)"})
    else:
        gain, full_gain = -d(ADEPT), -d(FULL)
        met = gain >= full_gain
        wins, n = _paired(
            seeds, (ADEPT, FULL), lambda r: r[ADEPT]["domain_loss_change"] <= r[FULL]["domain_loss_change"]
        )
        ratio = f" ({gain / full_gain:.0%} of full's)" if full_gain > 0 else ""
        targets.append(
            {
                "target": name,
                "met": met,
                "value": gain - full_gain,
                "seeds_met": [wins, n],
                "detail": (
                    f"decrease ADEPT {gain:.4f} vs full {full_gain:.4f} nats{ratio}: "
                    f"{'ahead' if met else 'behind'} by {abs(gain - full_gain):.4f} nats; per seed {wins}/{n}"
                ),
            }
        )

    for rival in RIVALS:
        name = f"ADEPT beats {rival} on domain gain at equal or lower forgetting"
        if ADEPT not in stats or rival not in stats or None in (g(ADEPT), g(rival), d(ADEPT), d(rival)):
            targets.append({"target": name, "met": None, "detail": f"not measured (needs adept and {rival})"})
            continue
        more_gain = d(ADEPT) < d(rival)
        met = more_gain and g(ADEPT) <= g(rival)
        wins, n = _paired(
            seeds,
            (ADEPT, rival),
            lambda r, rival=rival: (
                r[ADEPT]["domain_loss_change"] < r[rival]["domain_loss_change"]
                and r[ADEPT]["general_loss_change"] <= r[rival]["general_loss_change"]
            ),
        )
        targets.append(
            {
                "target": name,
                "met": met,
                "seeds_met": [wins, n],
                "detail": (
                    f"domain loss change ADEPT {d(ADEPT):+.4f} vs {rival} {d(rival):+.4f} "
                    f"({_versus(d(rival) - d(ADEPT), 'more gain', 'less gain', 'equal gain')}); general loss change "
                    "ADEPT "
                    f"{g(ADEPT):+.4f} vs {rival} {g(rival):+.4f} "
                    f"({_versus(g(rival) - g(ADEPT), 'less forgetting', 'more forgetting', 'equal forgetting')}); "
                    f"per seed {wins}/{n}"
                ),
            }
        )

    name = "time per token and peak memory relative to full CPT are reported"
    time_ratio, memory_ratio = _mean(stats, ADEPT, "time_per_token_vs_full"), _mean(stats, ADEPT, "peak_memory_vs_full")
    if time_ratio is None or memory_ratio is None:
        targets.append(
            {"target": name, "met": None, "detail": "not measured (needs adept and full with training summaries)"}
        )
    else:
        targets.append(
            {
                "target": name,
                "met": True,
                "detail": (
                    f"in the table; ADEPT takes {time_ratio:.2f}x full CPT's time per token and {memory_ratio:.2f}x "
                    "its peak memory"
                ),
            }
        )
    return targets


# --- writing --------------------------------------------------------------------------------


def _cell(summary: dict[str, Any] | None, fmt: str) -> str:
    if not summary or summary["mean"] is None:
        return "–"
    text = format(summary["mean"], fmt)
    if summary["std"] is not None:
        text += " ± " + format(summary["std"], fmt.lstrip("+"))
    return text


def budget_lines(configs: dict[int, Any], labels: list[str]) -> list[str]:
    """Domain tokens per label (max_steps × batch × accumulation × block_size × (1 - replay))."""
    cfg = next(iter(configs.values()))
    block = cfg.data.block_size
    groups: dict[str, list[str]] = {}
    for label in labels:
        settings = cfg.method_settings(label)
        args = settings.training_args
        steps, batch = args["max_steps"], args["per_device_train_batch_size"]
        accum = args.get("gradient_accumulation_steps", 1)
        ratio = settings.replay_ratio
        tokens = steps * batch * accum * block * (1 - ratio)
        text = f"{tokens:,.0f} domain tokens = {steps} steps × batch {batch}" + (f" × {accum}" if accum != 1 else "")
        text += f" × block {block}" + (f" × {1 - ratio:.2f} (the rest replays general text)" if ratio else "")
        groups.setdefault(text, []).append(label)
    return [f"{', '.join(group)}: {text}" for text, group in groups.items()]


def stage2_line(cfg) -> str:
    """How the dynamic rates were set in these runs, read from the resolved config."""
    from adept.config import DEFAULT_REFRESHES

    rule, train = cfg.train.rule, cfg.train
    if train.reestimate_every is not None:
        every = f"every {train.reestimate_every} steps"
    elif train.reestimate_fraction is not None:
        every = f"every {train.reestimate_fraction:g} of the run"
    else:
        every = f"{DEFAULT_REFRESHES} refreshes per run (the default)"
    return (
        f"m = {rule.scale:g}(1 - I_norm) ({rule.rule}, {rule.normalization}, floor {rule.floor:g}), unit score "
        f"{rule.unit_score} of |w * dL/dw|, probe {train.probe.max_tokens} tokens, {every}; adept's copies start from"
        " their source layers' Stage 1 scores at step 0."
    )


def render_markdown(
    *,
    commands: list[str],
    config_path: str,
    seeds: dict[int, dict[str, Any]],
    missing: list[int],
    labels: list[str],
    stats: dict[str, Any],
    targets: list[dict[str, Any]],
    png_name: str,
    root: Path,
) -> str:
    first = next(iter(seeds.values()))
    cfg = first["config"]
    base = first["rows"].get(first["base"], {})
    machines = [data["machine"] for data in seeds.values() if data["machine"]]
    lines = [
        "# Method comparison",
        "",
        "## Toy model: every method at one rate on the 7.4M-parameter demo model",
        "",
        "What `make compare` runs (quick, on the demo model); the real-model fronts above are the comparison to trust. "
        "Every method trained from the same base model on the same data (domain-token budgets below), one run per "
        "seed,",
        "then evaluated on held-out general text (forgetting), held-out domain text (gain) and the two",
        "multiple-choice benchmarks. Regenerate with:",
        "",
        "```bash",
        *commands,
        "```",
        "",
        "### What was run",
        "",
        f"- Config: `{config_path}`; model `{cfg.model}`; domain corpus "
        f"{', '.join(f'`{p}`' for p in cfg.data.domain_train)}.",
        f"- Seeds: {', '.join(str(s) for s in seeds)} (training, data order and importance probe); run directories "
        f"`{root}/seed<N>` (merged HTML report: `{root}/report/index.html`).",
        *(
            [f"- Requested seeds without finished results (left out): {', '.join(map(str, missing))}."]
            if missing
            else []
        ),
        "- Budget per method:",
        *[f"  - {line}" for line in budget_lines({s: d["config"] for s, d in seeds.items()}, labels)],
        f"- Evaluation: held-out losses over at most {cfg.evaluation.max_blocks} blocks of {cfg.data.block_size} "
        "tokens per set, "
        f"benchmarks limited to {cfg.evaluation.limit} questions each.",
        f"- Stage 2 (adept, adept-no-stage1): {stage2_line(cfg)}",
        "- Time per token counts optimizer steps only (forward, backward, optimizer; not evaluation, saves or "
        "importance"
        " probes, whose time is in each run's `training_summary.json`).",
    ]
    if machines:
        seen = {
            json.dumps({k: v for k, v in m.items() if k not in ("seed", "command")}, sort_keys=True) for m in machines
        }
        for text in sorted(seen):
            m = json.loads(text)
            where = (
                f"{m['platform']}, {m['cpu_count']} CPUs "
                f"({m['usable_cpus']} usable, torch uses {m['torch_threads']} threads)"
            )
            where += f", {m['gpu']}" if m.get("gpu") else ""
            lines.append(f"- Machine: {where}; Python {m['python']}, torch {m['torch']}, device `{m['device']}`.")
    else:
        lines.append("- Machine: not recorded (the runs were made without this script).")
    if base:
        lines.append(
            f"- Base model (`{first['base']}`, the reference of every Δ): general loss {base['general_loss']:.4f}, "
            f"domain loss {base['domain_loss']:.4f}, general acc {_fmt(base.get('general_acc'), '.3f')}, "
            f"domain acc {_fmt(base.get('domain_acc'), '.3f')}."
        )
    header = ["method", "n"] + [col[1] for col in COLUMNS]
    lines += [
        "",
        "### Results",
        "",
        "Mean ± sample standard deviation over seeds (n = seeds with that method). Δ columns are changes from the base",
        "model: a negative loss change means lower loss. Time per token and peak memory are divided by full CPT's in",
        "the same seed; peak memory is "
        + (
            "the CUDA peak allocation."
            if cfg.device.startswith("cuda")
            else "the training process's resident-set growth (CPU)."
        ),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for label in labels:
        s = stats[label]
        name = label if s["method"] == label else f"{label} ({s['method']})"
        n = max(v["n"] for k, v in s.items() if isinstance(v, dict))
        lines.append("| " + " | ".join([name, str(n)] + [_cell(s.get(key), fmt) for key, _, fmt, _ in COLUMNS]) + " |")
    lines += ["", "### Targets", ""]
    for target in targets:
        mark = {True: "**met**", False: "**not met**", None: "**not judged**"}[target["met"]]
        lines.append(f"- {target['target']}: {mark}. {target['detail']}.")
    lines += [
        "",
        "### Forgetting vs. gain",
        "",
        "General-loss change % (x, right = more forgetting) against domain-loss change % (y, down = more gain),",
        "one point per method and seed; lower left is better.",
        "",
        f"![forgetting vs. gain]({png_name})",
        "",
    ]
    return "\n".join(lines + discussion_lines(stats, labels) + multiplier_lines(root, seeds, labels))


def multiplier_lines(root: Path, seeds: dict[int, dict[str, Any]], labels: list[str]) -> list[str]:
    """The dynamic methods' mean learning-rate multiplier, read from their rate logs.

    At one base learning rate a dynamic method trains its units at base x multiplier, so a mean
    multiplier above 1 acts partly as a higher learning rate than the uniform methods get.
    """
    from adept.pipeline import train_dir
    from adept.stage2 import read_rate_log
    from adept.training import RATES_LOG

    lines = []
    for label in labels:
        means = []
        for seed in seeds:
            log = train_dir(root / f"seed{seed}", label) / RATES_LOG
            if log.is_file():
                means += [statistics.fmean(entry["multipliers"].values()) for entry in read_rate_log(log)]
        if means:
            lines.append(
                f"- {label}: mean multiplier {statistics.fmean(means):.2f} (range of per-refresh means "
                f"{min(means):.2f}-{max(means):.2f}, {len(means)} refreshes over {len(seeds)} seeds)"
            )
    if not lines:
        return []
    return [
        "",
        "Mean learning-rate multiplier of the dynamic methods (over units, refreshes and seeds; uniform methods: 1):",
        "",
        *lines,
        "",
        "At one base learning rate, a mean above 1 makes a dynamic method train partly as if at a higher rate, which "
        "on",
        "its own moves it along its forgetting/gain trade-off; comparing methods at matched gain over several learning",
        "rates separates the two effects.",
        "",
    ]


def discussion_lines(stats: dict[str, Any], labels: list[str]) -> list[str]:
    """Forgetting per unit of gain for every method, ranked, and what it says about the targets."""
    ratios = {}
    for label in labels:
        forget, gain = _mean(stats, label, "general_loss_change"), _mean(stats, label, "domain_loss_change")
        if forget is not None and gain is not None and gain < 0:
            ratios[label] = forget / -gain
    if not ratios:
        return []
    ranked = sorted(ratios, key=ratios.get)
    lines = [
        "### Discussion",
        "",
        "Forgetting per unit of gain (mean general-loss increase / mean domain-loss decrease, in nats; lower is "
        "better):",
        "",
        "| method | ratio |",
        "|---|---:|",
        *[f"| {label} | {ratios[label]:.2f} |" for label in ranked],
        "",
    ]
    if ADEPT in ratios and FULL in ratios:
        better = ratios[ADEPT] < ratios[FULL]
        lines += [
            f"ADEPT's ratio is {ratios[ADEPT]:.2f} against full CPT's {ratios[FULL]:.2f}: on this setup it "
            + (
                "trades forgetting for gain better than full CPT."
                if better
                else (
                    "forgets less in absolute terms"
                    if _mean(stats, ADEPT, "general_loss_change") < _mean(stats, FULL, "general_loss_change")
                    else "does not forget less"
                )
                + " but not per unit of domain learned, so the paper's claim (full CPT's gain "
                "with almost no forgetting) is not reproduced at this scale."
            ),
            "A likely reason, not yet tested: the demo model is tiny (8 layers, 7.4M parameters, a 4k vocabulary "
            "learned on",
            "Austen), so two inserted layers are a large share of its capacity, and the frozen embeddings and output "
            "head,",
            "which the domain's foreign vocabulary most needs, stay untouched by every expansion method. The knob "
            "sweep",
            "below shows what was tried on ADEPT's own settings.",
            "",
        ]
    return lines


def _fmt(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def write_docs(path: Path, text: str) -> Path:
    """Replace what is above the knob-sweep marker; keep the marker and everything after it, and
    the real-model fronts section (benchmarks/fronts.py) under the title."""
    from fronts import END, START

    from adept.artifacts import write_text

    tail = MARKER + "\n" + KNOB_PLACEHOLDER
    if path.is_file():
        old = path.read_text()
        if MARKER in old:
            tail = old[old.index(MARKER) :]
        if START in old and END in old:
            title, _, rest = text.partition("\n")
            text = f"{title}\n\n{old[old.index(START) : old.index(END) + len(END)]}\n\n{rest.lstrip()}"
    return write_text(path, text.rstrip("\n") + "\n\n" + tail)


def plot(seeds: dict[int, dict[str, Any]], labels: list[str], path: Path) -> Path:
    from adept.plots import plot_forgetting_gain

    points = []
    for seed, data in seeds.items():
        for label in labels:
            row = data["rows"].get(label)
            if row and row.get("general_loss_change_pct") is not None and row.get("domain_loss_change_pct") is not None:
                points.append(
                    {
                        "x": row["general_loss_change_pct"],
                        "y": row["domain_loss_change_pct"],
                        "label": "",
                        "group": label,
                        "run": f"seed {seed}",
                    }
                )
    return plot_forgetting_gain(points, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    seeds_wanted = [int(s) for s in args.seeds.split(",") if s.strip()]
    root = Path(args.output_root)
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    command = "python benchmarks/compare_methods.py " + shlex.join(given)
    if not args.report_only:
        run_seeds(args, seeds_wanted, root, command.strip())

    from adept.artifacts import artifact_header, write_json
    from adept.pipeline import comparison_path
    from adept.report import build_report

    seeds = {}
    for seed in seeds_wanted:
        run_dir = root / f"seed{seed}"
        if not comparison_path(run_dir).is_file():
            print(f"seed {seed}: {comparison_path(run_dir)} not found, left out", file=sys.stderr)
            continue
        seeds[seed] = read_seed(run_dir)
    if not seeds:
        print(f"no finished seed under {root}", file=sys.stderr)
        return 1
    first = next(iter(seeds.values()))
    order = [m.strip() for m in args.methods.split(",")] if args.methods else list(first["config"].train.methods)
    present = {label for data in seeds.values() for label in data["rows"]}
    extra = sorted(present - set(order) - {data["base"] for data in seeds.values()}) if not args.methods else []
    labels = [label for label in order + extra if label in present]
    stats = aggregate(seeds, labels)
    targets = check_targets(stats, seeds)

    docs = Path(args.docs)
    png = plot(seeds, labels, docs.with_name(f"{docs.stem}_forgetting_gain.png"))
    build_report([root / f"seed{s}" for s in seeds], output_dir=root / "report")
    # The command that trained the runs (recorded with them), not a later --report-only call.
    recorded = list(
        dict.fromkeys(d["machine"]["command"] for d in seeds.values() if (d["machine"] or {}).get("command"))
    )
    commands = recorded or [command.strip()]
    missing = [seed for seed in seeds_wanted if seed not in seeds]
    text = render_markdown(
        commands=commands,
        config_path=args.config,
        seeds=seeds,
        missing=missing,
        labels=labels,
        stats=stats,
        targets=targets,
        png_name=png.name,
        root=root,
    )
    write_docs(docs, text)
    base = first["rows"].get(first["base"], {})
    write_json(
        docs.with_suffix(".json"),
        {
            **artifact_header("method-comparison"),
            "commands": commands,
            "config": args.config,
            "seeds": list(seeds),
            "run_dirs": [str(root / f"seed{s}") for s in seeds],
            "budget": budget_lines({s: d["config"] for s, d in seeds.items()}, labels),
            "machines": {str(s): d["machine"] for s, d in seeds.items()},
            "base": {key: base.get(key) for key in ("general_loss", "domain_loss", "general_acc", "domain_acc")},
            "methods": stats,
            "targets": targets,
            "plot": str(png),
        },
    )
    print()
    print(text.split("### Results", 1)[1].split("## Forgetting", 1)[0].strip())
    print(f"\nwritten: {docs}, {docs.with_suffix('.json')}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
