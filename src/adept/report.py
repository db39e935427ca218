"""The run report: one self-contained HTML page and a Markdown twin, built only from artifacts.

Reads whatever a pipeline run directory holds (``config.yaml``, ``importance/``,
``expanded/*/expansion.json``, ``train/*/training_summary.json`` and ``unit_rates.jsonl``,
``eval/results.json``, ``shift/*/shift.json``) and writes ``index.html`` (images embedded as
data URIs, so the file can be mailed), ``report.md`` and the PNGs it shows into the output
directory. A missing or unreadable part is listed in the report, never fatal. Nothing is
recomputed from models: the report shows the paper's quantities (Sec. 3.1 importance, Sec. 3.2
expansion, Sec. 3.3 per-unit rates, Sec. 4 forgetting vs. gain) exactly as the stages wrote them.
The sections are built in `adept.report_sections` and `adept.report_tables`; the page and its
Markdown twin are Jinja2 templates in ``adept/templates`` (jinja2 is imported only to render one).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adept import __version__
from adept.artifacts import read_json, write_text
from adept.report_sections import (
    Heading,
    RunArtifacts,
    Section,
    Table,
    Text,
    config_blocks,
    expansion_blocks,
    importance_blocks,
    missing_blocks,
)
from adept.report_tables import benchmark_blocks, comparison_blocks
from adept.report_training import loss_blocks, rate_blocks, shift_blocks

logger = logging.getLogger(__name__)

HTML_NAME = "index.html"
MARKDOWN_NAME = "report.md"
REPORT_DIR = "report"


# --- what a run directory holds ------------------------------------------------------------


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
            f"{path}: no pipeline artifacts found (expected config.yaml, importance/, expanded/, train/, eval/ or "
            "shift/)"
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
    html_path = write_text(output_dir / HTML_NAME, render("report.html.j2", title, meta, sections))
    md_path = write_text(output_dir / MARKDOWN_NAME, render("report.md.j2", title, meta, sections).rstrip("\n") + "\n")
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
                run.problems.append(
                    f"section '{by_anchor[anchor].title}' could not be built: {type(err).__name__}: {err}"
                )
            by_anchor[anchor].blocks.append(Text("Could not be built from the artifacts; see Missing artifacts."))

    for run in runs:
        heading = [Heading(f"Run {run.name}")] if several else []
        for anchor, build, args in (
            ("config", config_blocks, (run,)),
            ("importance", importance_blocks, (run, image_name)),
            ("expansion", expansion_blocks, (run,)),
            ("learning-rates", rate_blocks, (run, image_name)),
            ("losses", loss_blocks, (run, image_name)),
        ):
            by_anchor[anchor].blocks += heading
            add(anchor, [run], build, *args)
    add("comparison", runs, comparison_blocks, runs, labels, output_dir)
    add("benchmarks", runs, benchmark_blocks, runs, labels)
    add("token-shift", runs, shift_blocks, runs, image_name)
    by_anchor["missing"].blocks += missing_blocks(runs)
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


# --- rendering ---------------------------------------------------------------------------------

# A cell is right-aligned in HTML when every cell of its column looks like a number.
_NUMERIC = re.compile(r"^[+-]?[\d,]*\.?\d+(e[+-]?\d+)?\s*(%|s|B|KiB|MiB|GiB)?$")


def render(template: str, title: str, meta: Sequence[str], sections: Sequence[Section]) -> str:
    """The report page (``report.html.j2``) or its Markdown twin (``report.md.j2``) for ``sections``."""
    return _templates().get_template(template).render(title=title, meta=meta, sections=sections, version=__version__)


@functools.cache
def _templates():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("adept", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md"] = _md
    env.filters["base64"] = lambda path: base64.b64encode(Path(path).read_bytes()).decode("ascii")
    env.globals["numeric_columns"] = _numeric_columns
    return env


def _numeric_columns(table: Table) -> list[bool]:
    return [all(_NUMERIC.match(row[c]) or row[c] == "-" for row in table.rows) for c in range(len(table.columns))]


def _md(text: str) -> str:
    """Escape Markdown and inline-HTML syntax so artifact text shows literally."""
    text = re.sub(r"([\\`*_\[\]|#])", r"\\\1", str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
