"""Self-describing artifacts and safe directory writes shared by every stage.

Each JSON artifact carries a schema version, the package version and the inputs it was made
from, so a later stage (or a person) can tell what produced it. Directory outputs are written
to a temporary sibling and renamed into place, so an interrupted run never leaves a half-written
checkpoint and never destroys a finished one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from adept import __version__

SCHEMA_VERSION = 1


def artifact_header(kind: str) -> dict[str, Any]:
    """Fields every JSON artifact starts with."""
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "adept_version": __version__}


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically (temporary file + rename): readers never see half of it.

    The file is readable like any new file (``0o666`` less the umask), not private like the
    temporary file it is written as.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write JSON atomically with stable formatting."""
    return write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Read an artifact, checking its kind and schema version when given."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    if kind is not None:
        if payload.get("kind") != kind:
            raise ValueError(f"{path}: expected an artifact of kind '{kind}', found '{payload.get('kind')}'")
        if payload.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(
                f"{path}: schema_version {payload.get('schema_version')} is not supported "
                f"(this adept reads {SCHEMA_VERSION})"
            )
    return payload


def finite_number(value: Any) -> float | None:
    """A number read from an artifact, or None where it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) or math.isinf(value) else float(value)


def read_artifact(path: str | os.PathLike, name: str, kind: str) -> dict[str, Any]:
    """Read artifact ``name`` given either its file or the directory holding it."""
    path = Path(path)
    return read_json(path / name if path.is_dir() else path, kind=kind)


def check_output_dir(output_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless the caller allows overwriting."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir}: exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir}: directory is not empty (pass --overwrite to replace it)")


@contextlib.contextmanager
def atomic_directory(output_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``output_dir`` only if the block succeeds.

    The old directory, if any, is kept until the new one is in place, so a failure at any point
    leaves either the finished old output or the finished new one, never a mix.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        yield tmp_dir
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    backup = None
    if output_dir.exists():
        backup = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
        os.replace(output_dir, backup)
    os.replace(tmp_dir, output_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
