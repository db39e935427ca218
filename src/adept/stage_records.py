"""``pipeline.json``: what makes the stages of `adept run` resumable.

Every stage is recorded with a fingerprint of its settings, its input files and the fingerprints
of the stages it depends on. A stage whose record matches and whose outputs exist is skipped; a
stage whose inputs changed has its old outputs removed before it runs again. Under a launcher,
rank 0 alone writes the records and runs the main-process stages while the other ranks wait.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adept.artifacts import artifact_header, read_json, write_json
from adept.distributed import wait_for_main
from adept.results import SUMMARY_NAME

logger = logging.getLogger(__name__)

RECORD_NAME = "pipeline.json"
_HASH_LIMIT = 256 * 2**20  # files up to this size are hashed; larger ones are identified by size and mtime
# Files in a checkpoint or dataset directory that describe it rather than define it.
_NOT_CONTENT = {"README.md", "measurements.json", SUMMARY_NAME}


def path_identity(path: str | os.PathLike) -> Any:
    """Content hash of a file, or (name, size, mtime) of every file under a directory.

    Model cards and measurement files in a checkpoint directory are left out, so editing
    them does not invalidate every stage.

    lm-eval task names (not paths) identify themselves; a glob is the list of what it matches.
    """
    if glob.has_magic(str(path)) and not Path(path).exists():
        return [path_identity(match) for match in sorted(glob.glob(str(path), recursive=True))]
    path = Path(path)
    if path.is_file():
        if path.stat().st_size > _HASH_LIMIT:
            stat = path.stat()
            return f"{stat.st_size}:{stat.st_mtime_ns}"
        return hashlib.sha256(path.read_bytes()).hexdigest()
    if path.is_dir():
        entries = []
        for child in sorted(path.rglob("*")):
            rel = child.relative_to(path)
            if (
                child.is_file()
                and child.name not in _NOT_CONTENT
                and not any(part.startswith(".") for part in rel.parts)
            ):
                stat = child.stat()
                entries.append((str(rel), stat.st_size, stat.st_mtime_ns))
        return entries
    return str(path)


def fingerprint(**parts: Any) -> str:
    """A short hash of a stage's settings, input identities and upstream fingerprints."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StageRecords:
    """``pipeline.json``: per stage, its fingerprint and whether it finished.

    Only the main process writes it (``write``); the other ranks of a launched run keep the same
    records in memory, so every rank decides alike which stages to skip.
    """

    def __init__(self, run_dir: Path, write: bool = True):
        self.path = run_dir / RECORD_NAME
        self.write = write
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            self.stages = read_json(self.path, kind="pipeline")["stages"]

    def is_done(self, stage: str, print_: str, outputs: list[Path]) -> bool:
        record = self.stages.get(stage)
        return bool(
            record
            and record["fingerprint"] == print_
            and record["status"] == "done"
            and all(p.exists() for p in outputs)
        )

    def previous(self, stage: str) -> dict[str, Any] | None:
        return self.stages.get(stage)

    def mark(self, stage: str, print_: str, status: str, **extra: Any) -> None:
        entry = {"fingerprint": print_, "status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
        self.stages[stage] = entry
        if self.write:
            write_json(self.path, {**artifact_header("pipeline"), "stages": self.stages})


class ResumableStages:
    """Runs named stages, each skipped when its record in ``pipeline.json`` is current.

    ``records`` is opened by the subclass (`adept.pipeline.Pipeline`) once the run directory
    exists; ``ran`` and ``skipped`` list the stages of this call; ``main`` is whether this
    process is the launcher's rank 0 (or alone).
    """

    def __init__(self) -> None:
        self.records: StageRecords | None = None
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self._prints: dict[str, str] = {}
        self._identities: dict[str, Any] = {}
        self.main = True

    def _stage(
        self,
        name: str,
        print_: str,
        outputs: list[Path],
        work: Callable[[], Any],
        clean: list[Path] = (),
        every_rank: bool = False,
    ) -> None:
        """Run ``work`` unless the stage is up to date; wipe ``clean`` when its inputs changed.

        ``work`` runs on the main process only, unless ``every_rank`` (training); the ranks of a
        launched run meet before and after it.
        """
        assert self.records is not None
        self._prints[name] = print_
        if self.records.is_done(name, print_, outputs):
            logger.info("stage %s: up to date, skipped", name)
            self.skipped.append(name)
            return
        previous = self.records.previous(name)
        if self.main and previous is not None and previous["fingerprint"] != print_:
            for path in clean:
                if path.exists():
                    logger.info("stage %s: inputs changed, removing %s", name, path)
                    shutil.rmtree(path) if path.is_dir() else path.unlink()
        logger.info("stage %s: running", name)
        self.records.mark(name, print_, "running")
        wait_for_main()
        start = time.perf_counter()
        if every_rank or self.main:
            work()
        wait_for_main()
        self.records.mark(name, print_, "done", seconds=round(time.perf_counter() - start, 2))
        self.ran.append(name)

    def _identity(self, paths: list[str] | str | None) -> Any:
        """Identity of inputs, computed once per path and run (corpora feed many stages)."""
        if paths is None:
            return None
        if isinstance(paths, str):
            if paths not in self._identities:
                self._identities[paths] = path_identity(paths)
            return self._identities[paths]
        return [self._identity(p) for p in paths]
