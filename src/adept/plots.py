"""Every picture of the package, as PNG files made with matplotlib.

Importance (paper Fig. 2 style unit heatmap, layer bar chart), token shift (Fig. 5), per-unit
learning rates, losses and the forgetting-vs-gain scatter (Sec. 4). Called by the importance and
shift stages and by the report; reads only the values it is given. Only the non-interactive Agg
backend is used, so it works on headless machines. matplotlib and numpy are imported inside the
plotting functions, so the report modules (`adept report`) stay cheap to import.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adept.artifacts import finite_number


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, plt, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG (no software stamp, so the same figure gives the same bytes) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return path


def plot_unit_heatmap(
    unit_scores: Sequence[Sequence[float]],
    layers: Sequence[int],
    unit_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "Unit importance (|w * dL/dw|, normalised per unit type)",
) -> Path:
    """Layers x units heatmap; each column is min-max normalised so unit types are comparable."""
    import numpy as np

    plt = pyplot()
    data = np.array([[math.nan if v is None else v for v in row] for row in unit_scores], dtype=float)
    lo = np.nanmin(data, axis=0, keepdims=True)
    hi = np.nanmax(data, axis=0, keepdims=True)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    norm = (data - lo) / span
    short = [name.removesuffix(".weight").replace("self_attn.", "attn.") for name in unit_names]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(short) + 2), max(3, 0.35 * len(layers) + 1.5)))
    image = ax.imshow(norm, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(short)), short, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(layers)), [str(i) for i in layers], fontsize=8)
    ax.set_xlabel("unit")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def plot_layer_bars(
    scores: dict[str, Sequence[float]], layers: Sequence[int], path: str | os.PathLike, highlight: Sequence[int] = ()
) -> Path:
    """One bar panel per metric; highlighted layers (e.g. the ones chosen for expansion) in orange."""
    plt = pyplot()
    fig, axes = plt.subplots(len(scores), 1, figsize=(max(6, 0.35 * len(layers) + 2), 2.2 * len(scores)), squeeze=False)
    for ax, (metric, values) in zip(axes[:, 0], scores.items()):
        colors = ["tab:orange" if layer in highlight else "tab:blue" for layer in layers]
        ax.bar([str(i) for i in layers], values, color=colors)
        ax.set_ylabel(metric, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("layer")
    axes[0, 0].set_title("Layer importance for general competence", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, plt, path)


# The token-shift categories and rank bins (`adept.shift` computes them; this figure and the report show them).
CATEGORIES = ("unshifted", "marginal", "shifted")
RANK_BINS = ("1", "2", "3", "4-10", ">10")


def plot_shift(result: dict[str, Any], path: str | os.PathLike, title: str = "Token-distribution shift") -> Path:
    """Two bar panels of a ``shift.json`` result: category shares and the rank histogram of the tuned top-1 token."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    shares = [result["categories"][name] for name in CATEGORIES]
    bars = left.bar(CATEGORIES, shares, color=["tab:green", "tab:orange", "tab:red"])
    left.bar_label(bars, labels=[f"{100 * s:.1f}%" for s in shares], fontsize=8)
    left.set_ylim(0, 1.1)
    left.set_ylabel("share of positions")
    left.set_title("tuned top-1 in base distribution", fontsize=9)
    counts = [result["rank_histogram"][name] for name in RANK_BINS]
    right.bar(RANK_BINS, counts, color="tab:blue")
    right.set_xlabel("rank in base model")
    right.set_ylabel("positions")
    right.set_title("rank histogram", fontsize=9)
    fig.suptitle(f"{title} ({result['positions']} positions)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def _unit_label(name: str) -> tuple[int, str]:
    match = re.search(r"layers\.(\d+)\.(.+)$", name)
    if not match:
        return (-1, name.removesuffix(".weight"))
    return (int(match.group(1)), match.group(2).removesuffix(".weight").replace("self_attn.", "attn."))


def _step_axes(ax, ylabel: str, ncol: int = 1) -> None:
    """Optimizer step on x, a grid, and the legend outside on the right (unit and method names are long)."""
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=ncol, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)


def plot_unit_rates(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Per-unit LR multipliers of ``unit_rates.jsonl`` at each re-estimation.

    Lines for few units, a heatmap for many.
    """
    import numpy as np

    plt = pyplot()
    steps = [int(entry.get("step", i)) for i, entry in enumerate(history)]
    units = sorted({name for entry in history for name in entry["multipliers"]}, key=_unit_label)
    labels = [f"L{layer} {unit}" if layer >= 0 else unit for layer, unit in map(_unit_label, units)]
    data = np.array(
        [
            [np.nan if (value := finite_number(entry["multipliers"].get(u))) is None else value for entry in history]
            for u in units
        ],
        dtype=float,
    )
    if len(units) <= 24:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        cmap = plt.get_cmap("tab20" if len(units) > 10 else "tab10")
        for i, label in enumerate(labels):
            ax.plot(steps, data[i], marker="o", markersize=3, linewidth=1.2, color=cmap(i % cmap.N), label=label)
        _step_axes(ax, "LR multiplier", ncol=2)
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(steps) + 3), max(4, 0.16 * len(units) + 1.5)))
        image = ax.imshow(data, aspect="auto", cmap="viridis", interpolation="nearest")
        tick_every = max(1, len(steps) // 12)
        ax.set_xticks(range(0, len(steps), tick_every), [str(s) for s in steps[::tick_every]], fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=5)
        ax.set_xlabel("step of re-estimation")
        fig.colorbar(image, ax=ax, fraction=0.03, label="LR multiplier")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def _loss_series(log_history: Sequence[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """``train`` and one ``eval <name>`` series of (step, loss) from a Trainer log history."""
    series: dict[str, list[tuple[float, float]]] = {}
    for entry in log_history or []:
        step = finite_number(entry.get("step"))
        if step is None:
            continue
        for key, value in entry.items():
            value = finite_number(value)
            if value is None:
                continue
            if key == "loss":
                series.setdefault("train", []).append((step, value))
            else:
                match = re.fullmatch(r"eval_(?:(.+)_)?loss", key)
                if match:
                    series.setdefault(f"eval {match.group(1) or ''}".rstrip(), []).append((step, value))
    return series


def plot_losses(histories: dict[str, Sequence[dict[str, Any]]], path: str | os.PathLike, title: str) -> Path | None:
    """Training loss (solid) and held-out losses (dashed) against step, one colour per method; None without losses."""
    curves = {method: _loss_series(history) for method, history in histories.items()}
    if not any(curves.values()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    cmap = plt.get_cmap("tab10")
    styles = ["--", ":", "-."]
    for i, (method, series) in enumerate(curves.items()):
        color = cmap(i % cmap.N)
        evals = [name for name in series if name != "train"]
        if "train" in series:
            xs, ys = zip(*series["train"])
            ax.plot(xs, ys, color=color, linewidth=1.2, label=f"{method} train")
        for j, name in enumerate(evals):
            xs, ys = zip(*series[name])
            ax.plot(
                xs,
                ys,
                color=color,
                linestyle=styles[j % len(styles)],
                marker="o",
                markersize=3,
                label=f"{method} {name}",
            )
    _step_axes(ax, "loss")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def plot_forgetting_gain(points: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """General-loss change % (x) against domain-loss change % (y); lower-left is better on both.

    Each point is ``{"x", "y", "label", "group", "run"}``: colour by group (method), marker by run.
    """
    plt = pyplot()
    from matplotlib.lines import Line2D

    groups = list(dict.fromkeys(p["group"] for p in points))
    run_names = list(dict.fromkeys(p["run"] for p in points))
    markers = "os^Dvphx*<>"
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.axvline(0, color="0.6", linewidth=0.8)
    for p in points:
        color = cmap(groups.index(p["group"]) % cmap.N)
        marker = markers[run_names.index(p["run"]) % len(markers)]
        ax.scatter([p["x"]], [p["y"]], color=color, marker=marker, s=40, zorder=3)
        ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    handles = [Line2D([], [], color=cmap(i % cmap.N), marker="o", linestyle="", label=g) for i, g in enumerate(groups)]
    if len(run_names) > 1:
        handles += [
            Line2D([], [], color="0.3", marker=markers[i % len(markers)], linestyle="", label=r)
            for i, r in enumerate(run_names)
        ]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xlabel("general loss change % (right = more forgetting)")
    ax.set_ylabel("domain loss change % (down = more domain gain)")
    ax.set_title("Forgetting vs. domain gain (lower left is better)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, plt, path)


def plot_fronts(series: Sequence[dict[str, Any]], path: str | os.PathLike, dpi: int = 110) -> Path:
    """Forgetting against gain, one line per method's front (``adept.fronts_report.plot_series``).

    Left, the held-out losses: each point a learning rate (labelled), bars the range of its seeds.
    Right, the benchmarks: each run's paired accuracy changes, bars the 95% interval. A rate past
    its front's useful range that forgets far more than any efficient point is drawn at the top
    edge with its value written, so the efficient points stay readable.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for front in series:
        if not front["loss"]:
            continue
        style = front["style"]
        gains, values = [p["gain"] for p in front["loss"]], [p["value"] for p in front["loss"]]
        (line,) = axes[0].plot(gains, values, style, marker="o", label=front["name"])
        for p in front["loss"]:
            axes[0].annotate(p["rate"], (p["gain"], p["value"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if p["value_range"] and p["gain_range"]:
                (v_lo, v_hi), (g_lo, g_hi) = p["value_range"], p["gain_range"]
                axes[0].errorbar(
                    [p["gain"]],
                    [p["value"]],
                    xerr=[[p["gain"] - g_lo], [g_hi - p["gain"]]],
                    yerr=[[p["value"] - v_lo], [v_hi - p["value"]]],
                    fmt="none",
                    color=line.get_color(),
                    capsize=2,
                    lw=0.8,
                )
        bench = front["bench"]
        if bench:
            axes[1].errorbar(
                [b["x"] for b in bench],
                [b["y"] for b in bench],
                yerr=[[b["lo"] for b in bench], [b["hi"] for b in bench]],
                fmt=style + "o",
                color=line.get_color(),
                capsize=2,
                label=front["name"],
            )
    _clip_past_range(axes[0], series)
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
    fig.legend(handles, labels, loc="lower center", ncol=max(1, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, plt, path, dpi=dpi)


def _clip_past_range(ax, series: Sequence[dict[str, Any]]) -> None:
    efficient_values = [v for front in series for v in front["efficient"]]
    all_values = [p["value"] for front in series for p in front["loss"]]
    if not efficient_values:
        return
    low, high = min(all_values), max(efficient_values)
    top = high + max(1.0, 0.5 * (high - low))
    if max(all_values) <= top:
        return
    ax.set_ylim(low - 0.1 * (top - low), top)
    clipped = sorted(
        (p["gain"], p["value"], f"{front['name']} {p['rate']}")
        for front in series
        for p in front["loss"]
        if p["value"] > top
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


def plot_curves(
    curves: dict[str, tuple[Sequence[float], Sequence[float], bool]],
    path: str | os.PathLike,
    ylabel: str,
    title: str,
    dpi: int = 110,
) -> Path | None:
    """Loss over optimizer steps, one line per label (``(steps, losses, dashed)``); None without any."""
    if not curves:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (steps, losses, dashed) in curves.items():
        ax.plot(steps, losses, "--" if dashed else "-", marker=".", label=label)
    ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, plt, path, dpi=dpi)
