"""Forgetting-versus-gain fronts: what a learning-rate grid says about each method.

A learning rate moves every method along a curve of domain gain against general forgetting, so
one run per method compares rates, not methods. A *front* is one method trained at several rates;
methods are compared where their fronts meet a common gain. This module reads finished points
(one ``front@rate`` label per run directory and seed), averages them over seeds, and answers the
questions a user asks of a grid: which rates are on the front (``efficient``), what a front
forgets at a given gain (``at_gain``), which rates are past their useful range, which fronts were
still gaining at their highest rate, and what each costs per token and in memory.

Data layout shared by every function: ``{"seeds": {seed: {label: row}}, "base": {seed: base}}``,
where a row is what ``read_label`` reads from a run directory and a base is ``base_summary``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adept.artifacts import read_json
from adept.benchmarks import paired_difference
from adept.results import SUMMARY_NAME, weighted_loss
from adept.run_directory import BASE_LABEL, dial_label, results_path, train_dir

MACHINE_NAME = "machine.json"  # next to a point's model: its seed, command, wall time and machine

Point = tuple[float, float, float]  # (rate, mean gain %, mean of the measure read)


@dataclass(frozen=True)
class Front:
    """One method's front: the method (or ``train.variants`` label) it trains, its rate grid and its replay share.

    A *dial* front (``dial`` names a trained point's label) is that one run moved back towards
    where it started (`adept interpolate`): its ``rates`` are the alphas, 1 being the run itself.
    """

    name: str
    method: str
    rates: tuple[float, ...]
    replay_ratio: float = 0.0
    dial: str | None = None

    def tag(self, rate: float) -> str:
        """How tables and plots name one of the front's points: its rate, or its alpha on a dial."""
        return f"α{rate:g}" if self.dial else rate_name(rate)


def rate_name(rate: float) -> str:
    """``3e-4`` for 0.0003: the short form labels and tables use."""
    mantissa, exponent = f"{rate:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def label_of(front: Front, rate: float) -> str:
    """The point's label in its run directory: ``adept@1e-3``; on a dial ``adept@1e-3~0.5`` (alpha 1: the run)."""
    if front.dial:
        return front.dial if rate == 1.0 else dial_label(front.dial, rate)
    return f"{front.name}@{rate_name(rate)}"


def dial_front(front: Front, rate: float, alphas: Sequence[float]) -> Front:
    """The dial of ``front``'s point at ``rate``: the run at each alpha, and itself at 1."""
    return Front(
        f"{label_of(front, rate)} dial", front.method, (*sorted(alphas), 1.0), front.replay_ratio, label_of(front, rate)
    )


def front_named(fronts: Sequence[Front], name: str) -> Front:
    return next(f for f in fronts if f.name == name)


# --- reading finished points ----------------------------------------------------------------


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
    path = train_dir(run_dir, label) / "trainer_state.json"
    if not path.is_file():
        return []
    points = []
    for entry in read_json(path)["log_history"]:
        if f"eval_{corpus}_loss" in entry:
            points.append((entry["step"], entry[f"eval_{corpus}_loss"]))
    return points


def read_label(run_dir: Path, label: str, base: dict[str, Any]) -> dict[str, Any]:
    """One finished point as a row: loss and benchmark changes against ``base``, cost, and its curve."""
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
    for key in ("tokens_per_second", "peak_memory_bytes", "trainable_share", "train_seconds", "reestimation_seconds"):
        row[key] = summary.get(key)
    row["domain_tokens"] = summary.get("domain_tokens")
    row["steps"] = summary.get("global_step")
    row["run_seconds"] = read_json(machine_path)["seconds"] if machine_path.is_file() else None
    # The general held-out corpus the curve follows: the first one, named as in results.json.
    general = next((name for name, e in run["perplexity"].items() if e["domain"] == "general"), None)
    row["curve"] = eval_curve(run_dir, label, general) if general else []
    return row


def is_done(run_dir: Path, label: str) -> bool:
    return results_path(run_dir, label).is_file()


def is_complete(data: dict[str, Any], front: Front, seeds: Sequence[int]) -> bool:
    """Whether ``front`` has every rate done on every one of ``seeds``: its best rate is then fixed."""
    return all(label_of(front, rate) in data["seeds"].get(seed, {}) for seed in seeds for rate in front.rates)


def dial_points_done(data: dict[str, Any], dial: Front) -> list[tuple[int, str]]:
    """(seed, label) of each of the dial's moved-back points done (alpha 1, the trained run, left out)."""
    return [
        (seed, label_of(dial, alpha))
        for seed, rows in data["seeds"].items()
        for alpha in dial.rates[:-1]
        if label_of(dial, alpha) in rows
    ]


def base_summary(base: dict[str, Any]) -> dict[str, Any]:
    """What a front keeps of the base model's evaluation: the losses every row is a change from, and its accuracies."""
    return {
        "general_loss": weighted_loss(base["perplexity"], "general"),
        "domain_loss": weighted_loss(base["perplexity"], "domain"),
        "benchmarks": {k: {m: v.get(m) for m in ("acc", "acc_norm", "n")} for k, v in base["benchmarks"].items()},
    }


def collect(root: Path, seeds: Sequence[int], fronts: Sequence[Front]) -> dict[str, Any]:
    """Every finished label of every seed under ``root/seed<N>``, as rows grouped by seed."""
    data: dict[str, Any] = {"seeds": {}, "base": {}}
    for seed in seeds:
        run_dir = root / f"seed{seed}"
        base_path = results_path(run_dir, BASE_LABEL)
        if not base_path.is_file():
            continue
        base = read_json(base_path, kind="evaluation")["runs"][0]
        data["base"][seed] = base_summary(base)
        rows = {}
        for front in fronts:
            for rate in front.rates:
                label = label_of(front, rate)
                if is_done(run_dir, label) and (train_dir(run_dir, label) / SUMMARY_NAME).is_file():
                    rows[label] = read_label(run_dir, label, base)
        data["seeds"][seed] = rows
    return data


# --- fronts ---------------------------------------------------------------------------------


def _value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    if isinstance(value, dict):
        return value["diff"]
    return value


def front_points(data: dict[str, Any], front: Front, key: str) -> list[Point]:
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
    label = label_of(front, rate)
    values = [_value(rows[label], key) for rows in data["seeds"].values() if label in rows]
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if len(values) > 1 else None


def efficient(points: list[Point]) -> list[Point]:
    """The rates on the method's front: those no other rate beats on both gain and forgetting.

    A rate past the useful range (more forgetting *and* less gain than a lower one) is shown in
    the table and the plot but is not a trade-off anyone would pick, so it is not interpolated.
    """
    return [
        p
        for p in points
        if not any(q is not p and q[1] >= p[1] and q[2] <= p[2] and (q[1] > p[1] or q[2] < p[2]) for q in points)
    ]


def _on_front(points: list[Point], rates: set[float] | None) -> list[Point]:
    return efficient(points) if rates is None else [p for p in points if p[0] in rates]


def interpolate(points: list[Point], gain: float, rates: set[float] | None = None) -> float | None:
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


def at_gain(points: list[Point], gain: float, rates: set[float] | None = None) -> tuple[float | None, str]:
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


def front_values(data: dict[str, Any], front: Front, key: str) -> list[float]:
    """``key`` of every run of the front, over rates and seeds."""
    labels = {label_of(front, rate) for rate in front.rates}
    return [
        row[key]
        for rows in data["seeds"].values()
        for label, row in rows.items()
        if label in labels and row.get(key) is not None
    ]


def mean_over_rates(data: dict[str, Any], front: Front, key: str) -> float | None:
    values = front_values(data, front, key)
    return sum(values) / len(values) if values else None


def fastest(data: dict[str, Any], front: Front) -> float | None:
    """The front's highest optimizer-step throughput over its runs.

    The learning rate does not change the work of a step, so the runs of one front repeat one
    measurement; on a shared machine, other load only slows a run down, so the fastest run is the
    least disturbed one (as ``timeit`` takes the minimum).
    """
    return max(front_values(data, front, "tokens_per_second"), default=None)


def shared_breakpoints(a: list[Point], b: list[Point], lo: float, hi: float) -> list[float]:
    """The gains in ``[lo, hi]`` where either front has a rate, plus both ends.

    Between these gains both fronts are straight, so their difference is too: one front lies
    below the other at every gain of the range exactly when it does at each of these.
    """
    inside = {g for _, g, _ in (*efficient(a), *efficient(b)) if lo < g < hi}
    return sorted({lo, hi} | inside)


def compare_fronts(a: list[Point], b: list[Point]) -> dict[str, Any]:
    """Whether front ``a`` lies below ``b`` (less forgetting) at every gain both reach on their efficient rates.

    Returns ``{"status": "undecided"}`` without a common range, else ``"below"`` (bool) and
    ``"gaps"``: (gain, forgetting of a, forgetting of b) at each breakpoint of the shared range.
    """
    gains = [[g for _, g, _ in efficient(points)] for points in (a, b)]
    lo = max(min(g, default=math.inf) for g in gains)
    hi = min(max(g, default=-math.inf) for g in gains)
    if len(a) < 2 or len(b) < 2 or lo > hi:
        return {"status": "undecided"}
    gaps = [(g, interpolate(a, g), interpolate(b, g)) for g in shared_breakpoints(a, b, lo, hi)]
    return {"status": "decided", "below": all(x < y for _, x, y in gaps), "gaps": gaps, "range": (lo, hi)}


# --- seed noise -------------------------------------------------------------------------------

# Two-sided 95% quantiles of Student's t by degrees of freedom (seeds - 1); 1.96 beyond the table.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_interval(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean over seeds and the half-width of its 95% t-interval (None below two seeds)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, T95.get(len(values) - 1, 1.96) * sd / math.sqrt(len(values))


Fronts = Front | Sequence[Front]


def union_points(data: dict[str, Any], fronts: Fronts, key: str) -> list[Point]:
    """The points of one front, or of several read as one: a method's rates together with its dial,
    the trade-offs a user can reach by picking a rate or by moving a run back."""
    group = (fronts,) if isinstance(fronts, Front) else fronts
    return [point for front in group for point in front_points(data, front, key)]


def seed_view(data: dict[str, Any], seed: int) -> dict[str, Any]:
    """``data`` as if only ``seed`` had run: each seed's own fronts, for gaps measured seed by seed."""
    return {"seeds": {seed: data["seeds"][seed]}, "base": {seed: data["base"].get(seed)}}


def seed_gap(data: dict[str, Any], a: Fronts, b: Fronts, gain: float, below: bool = False) -> dict[str, Any]:
    """Front ``a``'s forgetting minus front ``b``'s at ``gain``, seed by seed (each seed's own fronts,
    interpolated on their efficient rates), with the mean and its 95% t-interval over the seeds where
    both fronts reach ``gain``. A difference whose interval holds 0 is not shown beyond seed noise.
    Either side may be several fronts read as one (`union_points`). With ``below``, a front whose
    smallest gain lies above ``gain`` is read there at that point's forgetting (`at_gain`'s "upper")."""

    def read(points: list[Point]) -> float | None:
        return at_gain(points, gain)[0] if below else interpolate(points, gain)

    diffs = []
    for seed in data["seeds"]:
        view = seed_view(data, seed)
        x = read(union_points(view, a, "forgetting_pct"))
        y = read(union_points(view, b, "forgetting_pct"))
        if x is not None and y is not None:
            diffs.append(x - y)
    if not diffs:
        return {"gain": gain, "n": 0, "diffs": [], "mean": None, "ci": None}
    mean, half = mean_interval(diffs)
    ci = None if half is None else [mean - half, mean + half]
    return {"gain": gain, "n": len(diffs), "diffs": diffs, "mean": mean, "ci": ci}


GAP_POSITIONS = ("low end", "middle", "high end")


def gap_verdict(gaps: Sequence[dict[str, Any]]) -> str:
    """Below or above the reference beyond seed noise only where every interval excludes 0.

    ``gaps`` are at the `GAP_POSITIONS`. Read where two or more seeds reach; a position with one
    seed is named, not read.
    """
    measured = [gap for gap in gaps if gap["ci"] is not None]
    if not measured:
        return "fewer than two seeds: no interval"
    if all(gap["ci"][1] < 0 for gap in measured):
        verdict = "below, beyond seed noise"
    elif all(gap["ci"][0] > 0 for gap in measured):
        verdict = "above, beyond seed noise"
    else:
        verdict = "no difference beyond seed noise"
    unread = [position for position, gap in zip(GAP_POSITIONS, gaps) if gap["ci"] is None]
    if unread:
        verdict += f" (the {' and '.join(unread)}: fewer than two seeds, not read)"
    return verdict


def front_gaps(data: dict[str, Any], a: Fronts, b: Fronts) -> dict[str, Any] | None:
    """``a``'s forgetting minus ``b``'s (`seed_gap`) at the `GAP_POSITIONS` of the gains both mean fronts
    reach, with the verdict; None while they share no gain.

    Fronts *apart* (one's smallest gain above the other's largest) are read over the lower front's
    gains, the higher one at its smallest-gain point: a user asking for less gain gets more at that
    cost, so the gap is a bound in the lower front's favour (``"apart": True``).
    """
    pa, pb = union_points(data, a, "forgetting_pct"), union_points(data, b, "forgetting_pct")
    mean = compare_fronts(pa, pb)
    apart = False
    if mean["status"] == "decided":
        lo, hi = mean["range"]
    else:
        ga, gb = ([g for _, g, _ in efficient(points)] for points in (pa, pb))
        if not ga or not gb or (max(ga) >= min(gb) and max(gb) >= min(ga)):
            return None
        lower = ga if max(ga) < min(gb) else gb
        lo, hi, apart = min(lower), max(lower), True
    gaps = [seed_gap(data, a, b, gain, below=apart) for gain in (lo, (lo + hi) / 2, hi)]
    return {"range": [lo, hi], "gaps": gaps, "verdict": gap_verdict(gaps), "apart": apart}
