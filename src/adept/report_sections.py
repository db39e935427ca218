"""The report's sections about the stages' artifacts, and the blocks every section is made of.

Configuration, layer importance (paper Sec. 3.1), expansion (Sec. 3.2) and the list of missing
artifacts, each built from a `RunArtifacts` into a list of blocks (paragraph, sub-heading, list,
code, figure, table) that the templates in ``adept/templates`` render as HTML and Markdown. Figures
are drawn by `adept.plots` or copied from the stages into the report directory. Training's sections
(rates, losses, token shift) are in `adept.report_training`, the evaluation tables in
`adept.report_tables`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from adept.artifacts import finite_number
from adept.plots import plot_layer_bars, plot_unit_heatmap

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOP_TOKENS = 20


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


# --- blocks: what the templates render ---------------------------------------------------------


@dataclass
class Text:
    """A paragraph."""

    text: str
    kind: ClassVar[str] = "text"


@dataclass
class Items:
    """A bulleted list."""

    items: list[str]
    kind: ClassVar[str] = "items"


@dataclass
class Heading:
    """A sub-heading inside a section."""

    text: str
    kind: ClassVar[str] = "heading"


@dataclass
class Code:
    """Collapsible source text (``summary`` is the label shown when collapsed)."""

    text: str
    summary: str
    language: str = ""
    kind: ClassVar[str] = "code"


@dataclass
class Figure:
    """A PNG in the report directory: embedded in the page, linked from the Markdown."""

    path: Path
    caption: str
    kind: ClassVar[str] = "figure"


@dataclass
class Table:
    """Already formatted cells; ``highlight`` holds (row, column) of the best values."""

    columns: list[str]
    rows: list[list[str]]
    highlight: set[tuple[int, int]] = field(default_factory=set)
    kind: ClassVar[str] = "table"


@dataclass
class Section:
    """A top-level part of the report, with its navigation anchor."""

    title: str
    anchor: str
    blocks: list[Any] = field(default_factory=list)


# --- cells and figures -------------------------------------------------------------------------


def format_cell(value: Any, style: str) -> str:
    """One cell; ``-`` where the value is unknown."""
    if style == "text":
        return "-" if value is None else str(value)
    number = finite_number(value)
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


def copy_png(run: RunArtifacts, source: Path, target: Path) -> Path | None:
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


def none_found(what: str) -> Text:
    return Text(f"Not found: {what}.")


# --- sections ----------------------------------------------------------------------------------


def config_blocks(run: RunArtifacts) -> list[Any]:
    """The run's ``config.yaml``, collapsed."""
    if run.config_text is None:
        return [none_found("config.yaml")]
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


def importance_blocks(run: RunArtifacts, image_name) -> list[Any]:
    """Layer and unit importance: the stage's charts (redrawn when gone) and per-metric scores and ranks."""
    imp = run.importance
    if imp is None and not run.importance_pngs:
        return [none_found("importance/importance.json")]
    blocks: list[Any] = []
    duplicated = _duplicated_layers(run)
    if imp is not None:
        probe = imp.get("probe") or {}
        facts = [f"model {imp.get('model', '-')}", f"{imp.get('num_tokens', '-')} probe tokens"]
        if probe.get("path"):
            facts.append(f"probe {probe['path']}")
        if finite_number(imp.get("base_loss")) is not None:
            facts.append(f"base probe loss {format_cell(imp['base_loss'], 'fixed')}")
        blocks.append(Text("Importance for general competence: " + ", ".join(facts) + "."))
    layers = list(imp.get("layers") or []) if imp else []
    scores = (imp.get("layer_scores") or {}) if imp else {}
    for key, title, caption in (
        ("layer", "layer", "Layer importance per metric (bars); higher = more important for general competence."),
        ("unit", "unit", "Unit importance |w * dL/dw| per layer, each unit type normalised."),
    ):
        target = image_name(run, f"importance_{title}")
        if key in run.importance_pngs:
            if copy_png(run, run.importance_pngs[key], target):
                blocks.append(Figure(target, caption))
            continue
        # Redraw from importance.json when the stage's PNG is gone (still listed as missing).
        try:
            if key == "layer" and scores and layers:
                path = plot_layer_bars(scores, layers, target, highlight=sorted(duplicated))
                blocks.append(Figure(path, caption + " Redrawn."))
            elif key == "unit" and imp and imp.get("unit_grad_weight") and layers:
                path = plot_unit_heatmap(imp["unit_grad_weight"], layers, imp.get("unit_names") or [], target)
                blocks.append(Figure(path, caption + " Redrawn."))
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
                row.append(format_cell(values[i] if i < len(values) else None, "score"))
                order = ranking.get(metric) or []
                row.append(str(order.index(layer) + 1) if layer in order else "-")
            row.append("; ".join(duplicated.get(layer, [])) or "-")
            if layer in duplicated:
                highlight.add((len(rows), len(columns) - 1))
            rows.append(row)
        blocks.append(Table(columns, rows, highlight))
        blocks.append(
            Text(
                "Rank 1 = most important. "
                "Highlighted: layers duplicated by the expansion stage (the least important ones)."
            )
        )
    return blocks


def _initialized_summary(manifest: Mapping[str, Any]) -> str:
    """``o_proj, down_proj = 0`` style: which modules of the copies were set, and to what."""
    by_value: dict[float, set[str]] = {}
    for key, value in (manifest.get("initialized_tensors") or {}).items():
        by_value.setdefault(value, set()).add(key.split(".", 3)[-1].rsplit(".", 1)[0].rsplit(".", 1)[-1])
    return "; ".join(f"{', '.join(sorted(names))} = {value:g}" for value, names in sorted(by_value.items())) or "-"


def expansion_blocks(run: RunArtifacts) -> list[Any]:
    """Each expanded checkpoint: where the copies went, from which source layer, and the new layer order."""
    if not run.expansions:
        return [none_found("expanded/*/expansion.json")]
    blocks: list[Any] = []
    for name, manifest in run.expansions.items():
        inserted = manifest.get("inserted_layers") or []
        selection = manifest.get("selection") or {}
        chosen = ", ".join(f"{k}={v}" for k, v in selection.items())
        blocks.append(
            Text(
                f"{name}: {manifest.get('source_model', '-')} ({manifest.get('model_type', '-')}), "
                f"{manifest.get('source_num_layers', '-')} → {manifest.get('num_hidden_layers', '-')} layers; "
                f"{len(inserted)} copies inserted; selection: {chosen or '-'}; "
                f"{len(manifest.get('initialized_tensors') or {})} tensors of the copies set so they start as "
                "identities "
                f"({_initialized_summary(manifest)})."
            )
        )
        layer_map = manifest.get("layer_map") or {}
        rows = []
        for layer in inserted:
            source = _source_of(layer)
            moved_to = layer_map.get(str(source)) if source is not None else None
            rows.append(
                [
                    format_cell(layer.get("layer_idx"), "text"),
                    format_cell(source, "text"),
                    format_cell(moved_to, "text"),
                ]
            )
        blocks.append(Table(["copy at layer_idx", "copied from source layer", "source layer's new layer_idx"], rows))
        order = _layer_order(manifest)
        if order:
            blocks.append(
                Text("Expanded layer order (source layer of each new layer, copies starred): " + " ".join(order))
            )
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


def missing_blocks(runs: list[RunArtifacts]) -> list[Any]:
    """What each run directory lacks and what was found but could not be used."""
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
