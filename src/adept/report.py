"""The run report: one self-contained HTML page and a Markdown twin, built only from artifacts.

Reads whatever a pipeline run directory holds (``config.yaml``, ``importance/``,
``expanded/*/expansion.json``, ``train/*/training_summary.json`` and ``unit_rates.jsonl``,
``eval/results.json``, ``shift/*/shift.json``) and writes ``index.html`` (images embedded as
data URIs, so the file can be mailed), ``report.md`` and the PNGs it shows into the output
directory. A missing or unreadable part is listed in the report, never fatal. Nothing is
recomputed from models: the report shows the paper's quantities (Sec. 3.1 importance, Sec. 3.2
expansion, Sec. 3.3 per-unit rates, Sec. 4 forgetting vs. gain) exactly as the stages wrote them.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adept import __version__
from adept.artifacts import read_json
from adept.plots import plot_forgetting_gain, plot_layer_bars, plot_losses, plot_unit_heatmap, plot_unit_rates

logger = logging.getLogger(__name__)

HTML_NAME = "index.html"
MARKDOWN_NAME = "report.md"
REPORT_DIR = "report"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOP_TOKENS = 20


# --- what a run directory holds ------------------------------------------------------------


@dataclass
class RunArtifacts:
    """Everything readable in one run directory; ``missing`` and ``problems`` say what is not."""

    name: str
    path: Path
    config_text: str | None = None
    importance: dict[str, Any] | None = None
    importance_pngs: dict[str, Path] = field(default_factory=dict)
    expansions: dict[str, dict[str, Any]] = field(default_factory=dict)
    trainings: dict[str, dict[str, Any]] = field(default_factory=dict)
    unit_rates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    shifts: dict[str, dict[str, Any]] = field(default_factory=dict)
    shift_pngs: dict[str, Path] = field(default_factory=dict)
    found: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def collect_run(run_dir: str | os.PathLike, name: str | None = None) -> RunArtifacts:
    """Read every known artifact of ``run_dir``; raise only if the directory holds none at all."""
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: run directory not found")
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a directory")
    run = RunArtifacts(name=name or path.resolve().name, path=path)

    config = path / "config.yaml"
    if config.is_file():
        run.found.append("config.yaml")
        try:
            run.config_text = config.read_text()
        except (OSError, UnicodeDecodeError) as err:
            run.problems.append(f"{config}: unreadable ({err})")
    else:
        run.missing.append("config.yaml")

    run.importance = _load(run, "importance/importance.json", "importance")
    if not (path / "importance" / "importance.json").is_file():
        run.missing.append("importance/importance.json")
    for key in ("layer", "unit"):
        rel = f"importance/{key}_importance.png"
        if (path / rel).is_file():
            run.found.append(rel)
            run.importance_pngs[key] = path / rel
        elif (path / "importance").is_dir():
            run.missing.append(rel)

    expanded = _subdirs(path / "expanded")
    for sub in expanded:
        rel = f"expanded/{sub}/expansion.json"
        if not (path / rel).is_file():
            run.missing.append(rel)
        elif (manifest := _load(run, rel, "expansion")) is not None:
            run.expansions[sub] = manifest
    if not expanded:
        run.missing.append("expanded/*/expansion.json")

    trained = _subdirs(path / "train")
    for sub in trained:
        rel = f"train/{sub}/training_summary.json"
        if not (path / rel).is_file():
            run.missing.append(rel)
        elif (summary := _load(run, rel, "training")) is not None:
            run.trainings[sub] = summary
        if rates := _load_jsonl(run, f"train/{sub}/unit_rates.jsonl"):
            run.unit_rates[sub] = rates
    if not trained:
        run.missing.append("train/*/training_summary.json")
    if not run.unit_rates:
        run.missing.append("train/*/unit_rates.jsonl")

    run.evaluation = _load(run, "eval/results.json", "evaluation")
    if not (path / "eval" / "results.json").is_file():
        run.missing.append("eval/results.json")

    shifted = _subdirs(path / "shift")
    for sub in shifted:
        rel, png = f"shift/{sub}/shift.json", f"shift/{sub}/shift.png"
        if not (path / rel).is_file():
            run.missing.append(rel)
        elif (shift := _load(run, rel, "shift")) is not None:
            run.shifts[sub] = shift
        if (path / png).is_file():
            run.found.append(png)
            run.shift_pngs[sub] = path / png
        else:
            run.missing.append(png)
    if not shifted:
        run.missing.append("shift/*/shift.json")

    if not run.found:
        raise ValueError(
            f"{path}: no pipeline artifacts found (expected config.yaml, importance/, expanded/, train/, eval/ or shift/)"
        )
    return run


def _subdirs(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _load(run: RunArtifacts, rel: str, kind: str) -> dict[str, Any] | None:
    """An artifact, or ``None`` with the reason recorded; a bad file never stops the report."""
    path = run.path / rel
    if not path.is_file():
        return None
    run.found.append(rel)
    try:
        return read_json(path, kind=kind)
    except (ValueError, OSError, UnicodeDecodeError) as err:
        run.problems.append(str(err))
        return None


def _load_jsonl(run: RunArtifacts, rel: str) -> list[dict[str, Any]]:
    """Rate log lines; a truncated last line (a run killed mid-write) keeps the lines before it."""
    path = run.path / rel
    if not path.is_file():
        return []
    run.found.append(rel)
    entries = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        run.problems.append(f"{path}: unreadable ({err})")
        return []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            run.problems.append(f"{path}: line {number}: invalid JSON ({err.msg}); later lines skipped")
            break
        if isinstance(entry, dict) and isinstance(entry.get("multipliers"), dict):
            entries.append(entry)
    return entries


# --- document model, rendered to HTML and Markdown ---------------------------------------------


@dataclass
class Text:
    text: str


@dataclass
class Items:
    items: list[str]


@dataclass
class Heading:
    text: str


@dataclass
class Code:
    text: str
    summary: str
    language: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Table:
    """Already formatted cells; ``highlight`` holds (row, column) of the best values."""

    columns: list[str]
    rows: list[list[str]]
    highlight: set[tuple[int, int]] = field(default_factory=set)


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[Any] = field(default_factory=list)


# --- number formatting -------------------------------------------------------------------------


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def _fmt(value: Any, style: str) -> str:
    """One cell; ``-`` where the value is unknown."""
    if style == "text":
        return "-" if value is None else str(value)
    number = _num(value)
    if number is None:
        return "-"
    if style == "fixed":
        return f"{number:.4f}"
    if style == "signed":
        return f"{number:+.4f}"
    if style == "pct":
        return f"{number:+.2f}%"
    if style == "share":
        return f"{100 * number:.2f}%"
    if style == "int":
        return f"{int(round(number)):,}"
    if style == "seconds":
        return f"{number:.1f} s"
    if style == "bytes":
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if number >= size:
                return f"{number / size:.2f} {unit}"
        return f"{int(number)} B"
    if style == "score":
        return f"{number:.4g}"
    raise ValueError(f"unknown number style '{style}'")


# (key, header, style, which value is best: "min", "max" or None)
COMPARISON_COLUMNS = (
    ("general_loss", "general loss", "fixed", "min"),
    ("general_loss_change", "Δ general loss", "signed", "min"),
    ("general_loss_change_pct", "Δ general loss %", "pct", "min"),
    ("domain_loss", "domain loss", "fixed", "min"),
    ("domain_loss_change", "Δ domain loss", "signed", "min"),
    ("domain_loss_change_pct", "Δ domain loss %", "pct", "min"),
    ("general_acc", "general acc", "fixed", "max"),
    ("general_acc_change", "Δ general acc", "signed", "max"),
    ("domain_acc", "domain acc", "fixed", "max"),
    ("domain_acc_change", "Δ domain acc", "signed", "max"),
    ("trainable_parameters", "trainable params", "int", None),
    ("trainable_share", "trainable share", "share", None),
    ("wall_seconds", "wall time", "seconds", "min"),
    ("tokens_per_second", "tokens/s", "int", "max"),
    ("peak_memory_bytes", "peak memory", "bytes", "min"),
)


def _best_cells(values: list[list[float | None]], directions: Sequence[str | None], skip_rows: set[int]) -> set[tuple[int, int]]:
    """Cells holding the best value of their column, among rows not in ``skip_rows``."""
    best = set()
    for col, direction in enumerate(directions):
        if direction is None:
            continue
        candidates = [(row[col], r) for r, row in enumerate(values) if r not in skip_rows and row[col] is not None]
        if len(candidates) < 2:
            continue
        low, high = min(v for v, _ in candidates), max(v for v, _ in candidates)
        if low == high:  # a tie everywhere singles nothing out
            continue
        target = low if direction == "min" else high
        best.update((r, col) for v, r in candidates if v == target)
    return best


# --- the report --------------------------------------------------------------------------------


def build_report(run_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``index.html``, ``report.md`` and their PNGs for one or several run directories.

    Args:
        run_dirs: pipeline run directories; several (e.g. seeds) are merged into one report.
        output_dir: where to write; defaults to ``RUN_DIR/report`` for a single run directory
            and is required for several.

    Returns:
        ``{"html": ..., "markdown": ..., "output_dir": ...}``.
    """
    if not run_dirs:
        raise ValueError("give at least one run directory")
    if output_dir is None and len(run_dirs) > 1:
        raise ValueError("several run directories need --output DIR for the merged report")
    runs = [collect_run(path) for path in run_dirs]
    _make_names_unique(runs)
    output_dir = Path(output_dir) if output_dir is not None else Path(run_dirs[0]) / REPORT_DIR
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir}: exists and is not a directory")
    output_dir.mkdir(parents=True, exist_ok=True)

    sections = build_sections(runs, output_dir)
    title = "ADEPT run report: " + ", ".join(run.name for run in runs)
    meta = [f"{run.name}: {run.path}" for run in runs]
    html_path = _write_text(output_dir / HTML_NAME, render_html(title, meta, sections))
    md_path = _write_text(output_dir / MARKDOWN_NAME, render_markdown(title, meta, sections))
    logger.info("report written to %s", html_path)
    return {"html": html_path, "markdown": md_path, "output_dir": output_dir}


def _make_names_unique(runs: list[RunArtifacts]) -> None:
    """Distinct run names (and image file prefixes), e.g. for two ``.../seed0`` directories."""
    seen: set[str] = set()
    for run in runs:
        name, count = run.name, 1
        while _slug(name) in seen:
            count += 1
            name = f"{run.name}-{count}"
        seen.add(_slug(name))
        run.name = name


def _write_text(path: Path, text: str) -> Path:
    """Temporary file + rename, so a reader never sees half a report; readable like any file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def build_sections(runs: list[RunArtifacts], output_dir: Path) -> list[Section]:
    """The report's sections in reading order; writes the PNGs they show into ``output_dir``."""
    several = len(runs) > 1
    labels = _display_labels(runs)

    def image_name(run: RunArtifacts, stem: str) -> Path:
        prefix = _slug(run.name) + "_" if several else ""
        return output_dir / f"{prefix}{_slug(stem)}.png"

    sections = [
        Section("Configuration", "config"),
        Section("Layer importance", "importance"),
        Section("Expansion", "expansion"),
        Section("Learning rates over training", "learning-rates"),
        Section("Losses", "losses"),
        Section("Forgetting vs. domain gain", "comparison"),
        Section("Benchmarks", "benchmarks"),
        Section("Token shift", "token-shift"),
        Section("Missing artifacts", "missing"),
    ]
    by_anchor = {s.anchor: s for s in sections}

    def add(anchor: str, problem_runs: list[RunArtifacts], build, *args) -> None:
        # Artifacts of the right kind can still hold odd values; one bad section must not
        # cost the rest of the report, so its failure is listed with the missing parts.
        try:
            by_anchor[anchor].blocks += build(*args)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            for run in problem_runs:
                run.problems.append(f"section '{by_anchor[anchor].title}' could not be built: {type(err).__name__}: {err}")
            by_anchor[anchor].blocks.append(Text("Could not be built from the artifacts; see Missing artifacts."))

    for run in runs:
        heading = [Heading(f"Run {run.name}")] if several else []
        for anchor, build, args in (
            ("config", _config_blocks, (run,)),
            ("importance", _importance_blocks, (run, image_name)),
            ("expansion", _expansion_blocks, (run,)),
            ("learning-rates", _rate_blocks, (run, image_name)),
            ("losses", _loss_blocks, (run, image_name)),
        ):
            by_anchor[anchor].blocks += heading
            add(anchor, [run], build, *args)
    add("comparison", runs, _comparison_blocks, runs, labels, output_dir)
    add("benchmarks", runs, _benchmark_blocks, runs, labels)
    add("token-shift", runs, _shift_blocks, runs, image_name)
    by_anchor["missing"].blocks += _missing_blocks(runs)
    return sections


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _display_labels(runs: list[RunArtifacts]) -> dict[tuple[str, str], str]:
    """Evaluation labels, prefixed with the run name where two run directories share one."""
    owners: dict[str, set[str]] = {}
    for run in runs:
        for label in _eval_labels(run):
            owners.setdefault(label, set()).add(run.name)
    return {
        (run.name, label): f"{run.name}/{label}" if len(owners[label]) > 1 else label
        for run in runs
        for label in _eval_labels(run)
    }


def _eval_labels(run: RunArtifacts) -> list[str]:
    if not run.evaluation:
        return []
    rows = [run.evaluation.get("comparison"), run.evaluation.get("runs")]
    labels = [str(row.get("label")) for part in rows if isinstance(part, list) for row in part if isinstance(row, dict)]
    return list(dict.fromkeys(labels))


def _copy_png(run: RunArtifacts, source: Path, target: Path) -> Path | None:
    """Copy a stage's PNG next to the report, refusing files that are not PNGs."""
    try:
        data = source.read_bytes()
    except OSError as err:
        run.problems.append(f"{source}: unreadable ({err})")
        return None
    if not data.startswith(PNG_MAGIC):
        run.problems.append(f"{source}: not a PNG image")
        return None
    target.write_bytes(data)
    return target


def _none_found(what: str) -> Text:
    return Text(f"Not found: {what}.")


# --- sections ----------------------------------------------------------------------------------


def _config_blocks(run: RunArtifacts) -> list[Any]:
    if run.config_text is None:
        return [_none_found("config.yaml")]
    lines = run.config_text.count("\n") + 1
    return [Code(run.config_text.rstrip("\n"), f"config.yaml ({lines} lines)", "yaml")]


def _duplicated_layers(run: RunArtifacts) -> dict[int, list[str]]:
    """Source layer -> where its copies went, across every expanded checkpoint of the run."""
    copies: dict[int, list[str]] = {}
    for name, manifest in run.expansions.items():
        for layer in manifest.get("inserted_layers") or []:
            source = _source_of(layer)
            if source is not None:
                copies.setdefault(source, []).append(f"{name}: layer {layer.get('layer_idx')}")
    return copies


def _source_of(layer: dict[str, Any]) -> int | None:
    source = layer.get("source_layer_idx", layer.get("source_layer"))
    return source if isinstance(source, int) else None


def _importance_blocks(run: RunArtifacts, image_name) -> list[Any]:
    imp = run.importance
    if imp is None and not run.importance_pngs:
        return [_none_found("importance/importance.json")]
    blocks: list[Any] = []
    duplicated = _duplicated_layers(run)
    if imp is not None:
        probe = imp.get("probe") or {}
        facts = [f"model {imp.get('model', '-')}", f"{imp.get('num_tokens', '-')} probe tokens"]
        if probe.get("path"):
            facts.append(f"probe {probe['path']}")
        if _num(imp.get("base_loss")) is not None:
            facts.append(f"base probe loss {_fmt(imp['base_loss'], 'fixed')}")
        blocks.append(Text("Importance for general competence: " + ", ".join(facts) + "."))
    layers = list(imp.get("layers") or []) if imp else []
    scores = (imp.get("layer_scores") or {}) if imp else {}
    for key, title, caption in (
        ("layer", "layer", "Layer importance per metric (bars); higher = more important for general competence."),
        ("unit", "unit", "Unit importance |w * dL/dw| per layer, each unit type normalised."),
    ):
        target = image_name(run, f"importance_{title}")
        if key in run.importance_pngs:
            if _copy_png(run, run.importance_pngs[key], target):
                blocks.append(Figure(target, caption))
            continue
        # Redraw from importance.json when the stage's PNG is gone (still listed as missing).
        try:
            if key == "layer" and scores and layers:
                blocks.append(Figure(plot_layer_bars(scores, layers, target, highlight=sorted(duplicated)), caption + " Redrawn."))
            elif key == "unit" and imp and imp.get("unit_grad_weight") and layers:
                blocks.append(Figure(plot_unit_heatmap(imp["unit_grad_weight"], layers, imp.get("unit_names") or [], target), caption + " Redrawn."))
        except (ValueError, TypeError, IndexError) as err:
            run.problems.append(f"importance/importance.json: cannot draw the {key} chart ({err})")
    if scores and layers:
        ranking = (imp.get("layer_ranking") or imp.get("ranking") or {}) if imp else {}
        metrics = list(scores)
        columns = ["layer"]
        for metric in metrics:
            columns += [metric, f"{metric} rank"]
        columns.append("duplicated as")
        rows, highlight = [], set()
        for i, layer in enumerate(layers):
            row = [str(layer)]
            for metric in metrics:
                values = scores[metric]
                row.append(_fmt(values[i] if i < len(values) else None, "score"))
                order = ranking.get(metric) or []
                row.append(str(order.index(layer) + 1) if layer in order else "-")
            row.append("; ".join(duplicated.get(layer, [])) or "-")
            if layer in duplicated:
                highlight.add((len(rows), len(columns) - 1))
            rows.append(row)
        blocks.append(Table(columns, rows, highlight))
        blocks.append(Text("Rank 1 = most important. Highlighted: layers duplicated by the expansion stage (the least important ones)."))
    return blocks


def _initialized_summary(manifest: Mapping[str, Any]) -> str:
    """``o_proj, down_proj = 0`` style: which modules of the copies were set, and to what."""
    by_value: dict[float, set[str]] = {}
    for key, value in (manifest.get("initialized_tensors") or {}).items():
        by_value.setdefault(value, set()).add(key.split(".", 3)[-1].rsplit(".", 1)[0].rsplit(".", 1)[-1])
    return "; ".join(f"{', '.join(sorted(names))} = {value:g}" for value, names in sorted(by_value.items())) or "-"


def _expansion_blocks(run: RunArtifacts) -> list[Any]:
    if not run.expansions:
        return [_none_found("expanded/*/expansion.json")]
    blocks: list[Any] = []
    for name, manifest in run.expansions.items():
        inserted = manifest.get("inserted_layers") or []
        selection = manifest.get("selection") or {}
        chosen = ", ".join(f"{k}={v}" for k, v in selection.items())
        blocks.append(Text(
            f"{name}: {manifest.get('source_model', '-')} ({manifest.get('model_type', '-')}), "
            f"{manifest.get('source_num_layers', '-')} → {manifest.get('num_hidden_layers', '-')} layers; "
            f"{len(inserted)} copies inserted; selection: {chosen or '-'}; "
            f"{len(manifest.get('initialized_tensors') or {})} tensors of the copies set so they start as identities "
            f"({_initialized_summary(manifest)})."
        ))
        layer_map = manifest.get("layer_map") or {}
        rows = []
        for layer in inserted:
            source = _source_of(layer)
            moved_to = layer_map.get(str(source)) if source is not None else None
            rows.append([_fmt(layer.get("layer_idx"), "text"), _fmt(source, "text"), _fmt(moved_to, "text")])
        blocks.append(Table(["copy at layer_idx", "copied from source layer", "source layer's new layer_idx"], rows))
        order = _layer_order(manifest)
        if order:
            blocks.append(Text("Expanded layer order (source layer of each new layer, copies starred): " + " ".join(order)))
    return blocks


def _layer_order(manifest: dict[str, Any]) -> list[str]:
    total = manifest.get("num_hidden_layers")
    if not isinstance(total, int) or total <= 0 or total > 10_000:
        return []
    order = ["?"] * total
    for old, new in (manifest.get("layer_map") or {}).items():
        if isinstance(new, int) and 0 <= new < total:
            order[new] = str(old)
    for layer in manifest.get("inserted_layers") or []:
        idx, source = layer.get("layer_idx"), _source_of(layer)
        if isinstance(idx, int) and 0 <= idx < total:
            order[idx] = f"{source}*"
    return order


def _rate_blocks(run: RunArtifacts, image_name) -> list[Any]:
    if not run.unit_rates:
        return [_none_found("train/*/unit_rates.jsonl (no method logged per-unit rates)")]
    blocks: list[Any] = []
    for method, history in run.unit_rates.items():
        blocks.append(Heading(f"{method}"))
        try:
            path = plot_unit_rates(history, image_name(run, f"rates_{method}"), f"{method}: per-unit LR multipliers")
            blocks.append(Figure(path, f"{method}: learning-rate multiplier of every trainable unit at each re-estimation."))
        except (ValueError, TypeError) as err:
            run.problems.append(f"train/{method}/unit_rates.jsonl: cannot draw the rates ({err})")
        rows = []
        for entry in history:
            values = [v for v in map(_num, entry["multipliers"].values()) if v is not None]
            rows.append([
                _fmt(entry.get("step"), "text"), str(len(values)),
                _fmt(min(values) if values else None, "score"),
                _fmt(sum(values) / len(values) if values else None, "score"),
                _fmt(max(values) if values else None, "score"),
            ])
        blocks.append(Table(["step", "units", "min multiplier", "mean multiplier", "max multiplier"], rows))
    return blocks


def _loss_blocks(run: RunArtifacts, image_name) -> list[Any]:
    if not run.trainings:
        return [_none_found("train/*/training_summary.json")]
    blocks: list[Any] = []
    histories = {method: summary.get("log_history") or [] for method, summary in run.trainings.items()}
    path = plot_losses(histories, image_name(run, "losses"), "Training loss (solid) and held-out losses (dashed)")
    if path is not None:
        blocks.append(Figure(path, "Loss against optimizer step for every trained method."))
    else:
        blocks.append(Text("The training summaries hold no logged losses."))
    columns = ["method", "steps", "train loss", "trainable params", "trainable share", "trainable layers",
               "wall time", "tokens/s", "peak memory", "re-estimation time"]
    rows = []
    for method, s in run.trainings.items():
        layers = s.get("trainable_layers")
        rows.append([
            str(s.get("method") or method), _fmt(s.get("global_step"), "int"), _fmt(s.get("train_loss"), "fixed"),
            _fmt(s.get("trainable_parameters"), "int"), _fmt(s.get("trainable_share"), "share"),
            ", ".join(map(str, layers)) if isinstance(layers, list) else "all",
            _fmt(s.get("wall_seconds"), "seconds"), _fmt(s.get("tokens_per_second"), "int"),
            _fmt(s.get("peak_memory_bytes"), "bytes"), _fmt(s.get("reestimation_seconds"), "seconds"),
        ])
    blocks.append(Table(columns, rows))
    return blocks


def _comparison_blocks(runs: list[RunArtifacts], labels: dict[tuple[str, str], str], output_dir: Path) -> list[Any]:
    evaluated = [run for run in runs if run.evaluation is not None]
    if not evaluated:
        return [_none_found("eval/results.json")]
    several = len(runs) > 1
    columns = ["label", "method"] + [header for _, header, _, _ in COMPARISON_COLUMNS]
    rows, values, base_rows, points = [], [], set(), []
    for run in evaluated:
        base = run.evaluation.get("base")
        for row in run.evaluation.get("comparison") or []:
            label = labels[(run.name, str(row.get("label")))]
            if row.get("label") == base:
                base_rows.add(len(rows))
            rows.append([label, _fmt(row.get("method"), "text")]
                        + [_fmt(row.get(key), style) for key, _, style, _ in COMPARISON_COLUMNS])
            values.append([None, None] + [_num(row.get(key)) for key, _, _, _ in COMPARISON_COLUMNS])
            x, y = _num(row.get("general_loss_change_pct")), _num(row.get("domain_loss_change_pct"))
            if row.get("label") != base and x is not None and y is not None:
                group = str(row.get("method") or row.get("label"))
                points.append({"x": x, "y": y, "label": label if not several else group, "group": group, "run": run.name})
    directions = [None, None] + [best for _, _, _, best in COMPARISON_COLUMNS]
    blocks: list[Any] = [
        Text("Losses on the general and domain held-out sets against the base model; Δ columns are changes from the base "
             "(negative loss change = better). Highlighted: best value among the adapted models."),
        Table(columns, rows, _best_cells(values, directions, base_rows)),
    ]
    if points:
        path = plot_forgetting_gain(points, output_dir / "forgetting_gain.png")
        blocks.append(Figure(path, "One point per method" + (" and run directory." if several else ".")))
    else:
        blocks.append(Text("No row has both a general and a domain loss change, so there is no scatter plot."))
    blocks += _perplexity_blocks(evaluated, labels)
    return blocks


def _perplexity_blocks(runs: list[RunArtifacts], labels: dict[tuple[str, str], str]) -> list[Any]:
    sets: dict[str, str] = {}
    for run in runs:
        for entry in run.evaluation.get("runs") or []:
            for name, result in (entry.get("perplexity") or {}).items():
                sets.setdefault(name, str((result or {}).get("domain") or "-"))
    if not sets:
        return []
    columns = ["label"] + [f"{name} ({domain}) ppl" for name, domain in sets.items()]
    rows, values, base_rows = [], [], set()
    for run in runs:
        for entry in run.evaluation.get("runs") or []:
            if entry.get("label") == run.evaluation.get("base"):
                base_rows.add(len(rows))
            results = entry.get("perplexity") or {}
            ppl = [_num((results.get(name) or {}).get("perplexity")) for name in sets]
            rows.append([labels[(run.name, str(entry.get("label")))]] + [_fmt(v, "fixed") for v in ppl])
            values.append([None] + ppl)
    best = _best_cells(values, [None] + ["min"] * len(sets), base_rows)
    return [Heading("Held-out perplexity"), Table(columns, rows, best)]


def _benchmark_blocks(runs: list[RunArtifacts], labels: dict[tuple[str, str], str]) -> list[Any]:
    entries = []
    for run in runs:
        if not run.evaluation:
            continue
        base = run.evaluation.get("base")
        changes = {str(row.get("label")): row.get("benchmarks") or {} for row in run.evaluation.get("comparison") or []}
        for entry in run.evaluation.get("runs") or []:
            label = str(entry.get("label"))
            for task, result in (entry.get("benchmarks") or {}).items():
                result = result or {}
                change = (changes.get(label, {}).get(task) or {}).get("change")
                entries.append((task, labels[(run.name, label)], label == base, result, change))
    if not entries:
        what = "eval/results.json" if not any(run.evaluation for run in runs) else "benchmark results in eval/results.json"
        return [_none_found(what)]
    entries.sort(key=lambda e: e[0])
    columns = ["task", "domain", "label", "n", "acc", "± stderr", "acc_norm", "Δ acc vs base"]
    rows, highlight = [], set()
    for task in dict.fromkeys(e[0] for e in entries):
        group = [e for e in entries if e[0] == task]
        values = [[_num(r.get("acc"))] for _, _, is_base, r, _ in group]
        best = _best_cells(values, ["max"], {i for i, e in enumerate(group) if e[2]})
        for i, (_, label, _, result, change) in enumerate(group):
            if (i, 0) in best:
                highlight.add((len(rows), 4))
            rows.append([task, _fmt(result.get("domain"), "text"), label, _fmt(result.get("n"), "int"),
                         _fmt(result.get("acc"), "fixed"), _fmt(result.get("acc_stderr"), "fixed"),
                         _fmt(result.get("acc_norm"), "fixed"), _fmt(change, "signed")])
    return [Table(columns, rows, highlight), Text("Highlighted: best accuracy per task among the adapted models.")]


def _shift_blocks(runs: list[RunArtifacts], image_name) -> list[Any]:
    if not any(run.shifts or run.shift_pngs for run in runs):
        return [_none_found("shift/*/shift.json")]
    several = len(runs) > 1
    columns = ["method", "base", "tuned", "positions", "changed top-1", "unshifted", "marginal", "shifted"]
    rows = []
    for run in runs:
        for method, shift in run.shifts.items():
            cats = shift.get("categories") or {}
            rows.append([f"{run.name}/{method}" if several else method, _fmt(shift.get("base"), "text"),
                         _fmt(shift.get("tuned"), "text"), _fmt(shift.get("positions"), "int"),
                         _fmt(shift.get("changed_top1_share"), "share"), _fmt(cats.get("unshifted"), "share"),
                         _fmt(cats.get("marginal"), "share"), _fmt(cats.get("shifted"), "share")])
    blocks: list[Any] = []
    if rows:
        blocks += [Text("Share of token positions whose base-model token is unshifted, marginal or shifted in the tuned "
                        "model's ranking; changed top-1 = share of positions whose most likely token changed."),
                   Table(columns, rows)]
    for run in runs:
        for method in sorted(set(run.shifts) | set(run.shift_pngs)):
            name = f"{run.name}/{method}" if several else method
            blocks.append(Heading(name))
            if method in run.shift_pngs:
                target = _copy_png(run, run.shift_pngs[method], image_name(run, f"shift_{method}"))
                if target:
                    blocks.append(Figure(target, f"{name}: token distribution shift."))
            shift = run.shifts.get(method)
            if shift is None:
                continue
            if shift.get("data"):
                blocks.append(Text(f"Measured on {shift['data']}."))
            tokens = shift.get("top_shifted_tokens") or []
            if tokens:
                blocks.append(Table(
                    ["#", "token", "token_id", "count", "share of shifted"],
                    [[str(i), repr(str(t.get("token"))), _fmt(t.get("token_id"), "text"), _fmt(t.get("count"), "int"),
                      _fmt(t.get("share_of_shifted"), "share")] for i, t in enumerate(tokens[:TOP_TOKENS], 1)],
                ))
    return blocks


def _missing_blocks(runs: list[RunArtifacts]) -> list[Any]:
    blocks: list[Any] = []
    for run in runs:
        prefix = f"{run.name}: " if len(runs) > 1 else ""
        if run.missing:
            blocks.append(Text(f"{prefix}not found in {run.path}:"))
            blocks.append(Items(list(run.missing)))
        if run.problems:
            blocks.append(Text(f"{prefix}found but not usable:"))
            blocks.append(Items(list(run.problems)))
        if not run.missing and not run.problems:
            blocks.append(Text(f"{prefix}every artifact was found." if prefix else "Every artifact was found."))
    return blocks


# --- rendering ---------------------------------------------------------------------------------

_CSS = """
body{margin:0;background:#f7f8fa;color:#1f2430;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px;background:#fff;box-shadow:0 0 0 1px #e5e7eb}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:32px 0 8px;padding-bottom:4px;border-bottom:1px solid #e5e7eb}
h3{font-size:15px;margin:20px 0 6px}.meta{color:#6b7280;font-size:12px;margin:0 0 12px}
nav ul{list-style:none;padding:0;margin:8px 0 0;display:flex;flex-wrap:wrap;gap:6px 14px;font-size:13px}
a{color:#1d4ed8;text-decoration:none}a:hover{text-decoration:underline}
.scroll{overflow-x:auto;margin:8px 0}table{border-collapse:collapse;font-size:12.5px}
th,td{padding:4px 9px;border-bottom:1px solid #e5e7eb;text-align:left;white-space:nowrap}
th{background:#f3f4f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.best{background:#dcfce7;font-weight:600}figure{margin:12px 0}img{max-width:100%;height:auto;border:1px solid #eef0f3}
figcaption{font-size:12px;color:#6b7280}pre{background:#f3f4f6;padding:12px;overflow:auto;font-size:12px;margin:6px 0}
details summary{cursor:pointer;font-weight:600}ul.items{margin:4px 0 12px;font-size:13px}
#missing p,#missing ul{background:#fffbeb}
"""
_NUMERIC = re.compile(r"^[+-]?[\d,]*\.?\d+(e[+-]?\d+)?\s*(%|s|B|KiB|MiB|GiB)?$")


def render_html(title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    """A self-contained page: inline CSS, images as data URIs, every text escaped."""
    esc = html.escape
    out = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">', f"<title>{esc(title)}</title>", f"<style>{_CSS}</style>", "</head>",
        "<body>", "<main>", f"<h1>{esc(title)}</h1>",
        f'<p class="meta">adept {esc(__version__)} &middot; ' + " &middot; ".join(esc(m) for m in meta) + "</p>",
        "<nav><ul>" + "".join(f'<li><a href="#{s.anchor}">{esc(s.title)}</a></li>' for s in sections) + "</ul></nav>",
    ]
    for section in sections:
        out.append(f'<section id="{section.anchor}">')
        out.append(f"<h2>{esc(section.title)}</h2>")
        out += [_block_html(block) for block in section.blocks]
        out.append("</section>")
    out += ["</main>", "</body>", "</html>", ""]
    return "\n".join(out)


def _block_html(block: Any) -> str:
    esc = html.escape
    if isinstance(block, Text):
        return f"<p>{esc(block.text)}</p>"
    if isinstance(block, Heading):
        return f"<h3>{esc(block.text)}</h3>"
    if isinstance(block, Items):
        return '<ul class="items">' + "".join(f"<li>{esc(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Code):
        return f"<details><summary>{esc(block.summary)}</summary><pre>{esc(block.text)}</pre></details>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(block.caption, quote=True)}">'
                f"<figcaption>{esc(block.caption)}</figcaption></figure>")
    if isinstance(block, Table):
        numeric = [all(_NUMERIC.match(row[c]) or row[c] == "-" for row in block.rows) for c in range(len(block.columns))]
        head = "".join(f"<th>{esc(c)}</th>" for c in block.columns)
        body = []
        for r, row in enumerate(block.rows):
            cells = []
            for c, cell in enumerate(row):
                classes = [name for name, on in (("num", numeric[c]), ("best", (r, c) in block.highlight)) if on]
                attr = f' class="{" ".join(classes)}"' if classes else ""
                cells.append(f"<td{attr}>{esc(cell)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    """The same content as Markdown, linking the PNGs next to it by relative path."""
    out = [f"# {_md(title)}", "", f"adept {__version__} · " + " · ".join(_md(m) for m in meta), ""]
    for section in sections:
        out += [f"## {_md(section.title)}", ""]
        for block in section.blocks:
            out += _block_markdown(block) + [""]
    return "\n".join(out).rstrip("\n") + "\n"


def _block_markdown(block: Any) -> list[str]:
    if isinstance(block, Text):
        return [_md(block.text)]
    if isinstance(block, Heading):
        return [f"### {_md(block.text)}"]
    if isinstance(block, Items):
        return [f"- {_md(item)}" for item in block.items]
    if isinstance(block, Code):
        fence = "````" if "```" in block.text else "```"
        return [f"{_md(block.summary)}:", "", f"{fence}{block.language}", block.text, fence]
    if isinstance(block, Figure):
        return [f"![{_md(block.caption)}]({block.path.name})", "", f"*{_md(block.caption)}*"]
    if isinstance(block, Table):
        lines = ["| " + " | ".join(_md(c) for c in block.columns) + " |", "|" + " --- |" * len(block.columns)]
        for r, row in enumerate(block.rows):
            cells = [f"**{_md(cell)}**" if (r, c) in block.highlight else _md(cell) for c, cell in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        return lines
    raise TypeError(f"unknown report block {type(block).__name__}")


def _md(text: str) -> str:
    """Escape Markdown and inline-HTML syntax so artifact text shows literally."""
    text = re.sub(r"([\\`*_\[\]|#])", r"\\\1", str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
