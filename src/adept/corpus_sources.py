"""Corpus specs: a file, glob or folder resolved to its files and the ``datasets`` builder that reads them.

Also the one-line errors for files ``datasets`` cannot read: they name the file, and the line of
invalid JSON. `adept.corpus` reads the rows; this module only looks at names and, on the error
path, at the files themselves. Light: no ``datasets`` import until an error needs one (and the
optional ``zstandard`` only for a ``.zst`` file).
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import lzma
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

TXT_SPLITS = ("paragraph", "line")

# File suffix -> `datasets.load_dataset` builder. Only the text formats may also be compressed.
FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".txt": "text", ".arrow": "arrow"}
TEXT_FORMATS = (".jsonl", ".json", ".csv", ".txt")
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
SAVED = "load_from_disk"  # the "builder" of a folder written by `Dataset.save_to_disk`
SUPPORTED = (
    f"{', '.join(FORMATS)} (the text formats also {', '.join(COMPRESSIONS)}), a folder of such files, "
    "or a folder written by datasets' save_to_disk"
)


class CorpusSource(NamedTuple):
    """A corpus spec resolved to the `datasets` builder that reads it and its files, sorted."""

    builder: str
    files: tuple[Path, ...]
    spec: str

    def name(self, row: int) -> str:
        """``file[row]`` (``spec[row]`` over several files): cheap, for `Document.source`."""
        return f"{self.files[0] if len(self.files) == 1 else self.spec}[{row}]"

    def locate(self, row: int) -> str:
        """Like `name`, but ``file:line`` for a JSON-lines file (reads the file: for errors only)."""
        if len(self.files) == 1 and self.builder == "json":
            line = _json_line_of_row(self.files[0], row)
            if line is not None:
                return f"{self.files[0]}:{line}"
        return self.name(row)


def _format_of(path: Path) -> tuple[str, str | None]:
    """``(builder, compression suffix)`` of a file name, or ValueError naming the supported ones."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = suffixes.pop() if suffixes and suffixes[-1] in COMPRESSIONS else None
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in FORMATS or (compression and suffix not in TEXT_FORMATS):
        shown = "".join(path.suffixes[-2:] if compression else path.suffixes[-1:]) or "no extension"
        raise ValueError(f"{path}: unsupported corpus format '{shown}' (supported: {SUPPORTED})")
    if compression == ".zst":
        try:
            import zstandard  # noqa: F401  (datasets needs it for .zst)
        except ImportError:
            raise ValueError(
                f"{path}: reading .zst files needs the zstandard package (pip install zstandard)"
            ) from None
    return FORMATS[suffix], compression


def _same_builder(spec: str, files: Sequence[Path]) -> str:
    builders = {file: _format_of(file)[0] for file in files}
    if len(set(builders.values())) > 1:
        examples = {}
        for file, builder in builders.items():
            examples.setdefault(builder, file.name)
        shown = ", ".join(f"{builder} ({name})" for builder, name in sorted(examples.items()))
        raise ValueError(f"{spec}: mixes corpus formats: {shown}; use one format per corpus")
    return next(iter(builders.values()))


def resolve_corpus(spec: str | os.PathLike) -> CorpusSource:
    """Resolve a corpus spec to its builder and sorted files.

    Args:
        spec: a file; a glob (``data/*.jsonl.gz``, ``**`` recursive); a folder of files of one
            format (searched recursively, hidden files and files of other extensions skipped);
            or a folder written by ``datasets`` ``save_to_disk`` (builder `SAVED`, the folder
            as its one file).

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a glob matching no file, a folder without readable files or mixing formats,
            an unsupported extension.
    """
    text = os.fspath(spec)
    path = Path(text)
    if not path.exists() and any(char in text for char in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise ValueError(f"{text}: the glob matches no file")
        return CorpusSource(_same_builder(text, files), tuple(files), text)
    if not path.exists():
        raise FileNotFoundError(f"{text}: no such file or directory")
    if path.is_file():
        return CorpusSource(_format_of(path)[0], (path,), text)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return CorpusSource(SAVED, (path,), text)
    candidates = sorted(
        file
        for file in path.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(path).parts)
    )
    files = []
    for file in candidates:
        try:
            _format_of(file)
        except ValueError:
            continue
        files.append(file)
    if not files:
        raise ValueError(
            f"{text}: a folder with no readable corpus file ({len(candidates)} files; supported: {SUPPORTED})"
        )
    return CorpusSource(_same_builder(text, files), tuple(files), text)


def corpus_specs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """One corpus spec or several as a non-empty list of strings."""
    specs = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not specs:
        raise ValueError("no corpus given")
    return specs


def check_txt_split(txt_split: str) -> None:
    """Refuse a ``txt_split`` other than `TXT_SPLITS`."""
    if txt_split not in TXT_SPLITS:
        raise ValueError(f"txt_split must be one of {TXT_SPLITS}, got '{txt_split}'")


# How datasets' builders say that the files hold no row at all (the json builder's StopIteration too).
_NO_DATA = ("corresponds to no data", "at least one example")


def read_error(source: CorpusSource, err: BaseException) -> ValueError:
    """Our one-line message for files `datasets` could not read: the file, and the line for JSON."""
    from datasets.exceptions import DatasetGenerationCastError
    from datasets.table import CastError

    chain = [err]
    while len(chain) < 20 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    if isinstance(err, StopIteration) or any(sign in str(e) for e in chain for sign in _NO_DATA):
        return ValueError(f"{source.spec}: no documents found (the corpus is empty)")
    if any(isinstance(e, (CastError, DatasetGenerationCastError)) for e in chain):
        culprit, columns, first = _odd_file(source)
        if culprit is not None:
            return ValueError(
                f"{culprit}: its columns {columns} differ from those of {source.files[0]} ({first}); "
                "give files of different columns as separate corpora"
            )
    cause = err
    while cause.__cause__ is not None:
        cause = cause.__cause__
    detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if source.builder == "json":
        for file in source.files:
            where = _invalid_json(file)
            if where is not None:
                return ValueError(where)
    culprit = source.files[0] if len(source.files) == 1 else _failing_file(source)
    return ValueError(f"{culprit or source.spec}: cannot be read as {source.builder} ({detail})")


def _failing_file(source: CorpusSource) -> Path | None:
    """The first of several files that fails alone (only on the error path: it reads them again)."""
    import datasets

    with tempfile.TemporaryDirectory(prefix="adept-check-") as scratch:
        for file in source.files:
            try:
                datasets.load_dataset(source.builder, data_files=[str(file)], split="train", cache_dir=scratch)
            except Exception:  # noqa: BLE001  (any failure names the file)
                return file
    return None


def _odd_file(source: CorpusSource) -> tuple[Path | None, list[str], list[str]]:
    """The first file whose columns differ from the first file's, its columns and the first's (error path only)."""
    import datasets

    first: list[str] = []
    with tempfile.TemporaryDirectory(prefix="adept-check-") as scratch:
        for file in source.files:
            try:
                columns = sorted(
                    datasets.load_dataset(
                        source.builder, data_files=[str(file)], split="train", cache_dir=scratch
                    ).column_names
                )
            except Exception:  # noqa: BLE001  (this only improves a message; the caller has a fallback)
                break
            if file == source.files[0]:
                first = columns
            elif columns != first:
                return file, columns, first
    return None, [], first


def _open_text(path: Path):
    """Open a possibly compressed text file for reading."""
    suffix = path.suffix.lower()
    if suffix == ".zst":
        import zstandard

        return zstandard.open(path, "rt", encoding="utf-8")
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(suffix, open)
    return opener(path, "rt", encoding="utf-8")


def _json_list_file(path: Path) -> bool:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                return line.lstrip().startswith("[")
    return False


def _json_line_of_row(path: Path, row: int) -> int | None:
    """The 1-based line of row ``row`` of a JSON-lines file (blank lines hold no row); None for a JSON list."""
    if _json_list_file(path):
        return None
    seen = -1
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return lineno
    return None


def _invalid_json(path: Path) -> str | None:
    """``file:line: invalid JSON (...)`` for the first line that does not parse, else None.

    A file whose first line does not parse may be one multi-line JSON document: it is then
    parsed whole, and only an error there counts.
    """
    try:
        return _first_json_error(path)
    except UnicodeDecodeError as err:
        return f"{path}: not UTF-8 text ({err.reason})"
    except (OSError, EOFError) as err:  # a corrupt compressed file
        return f"{path}: cannot be read ({err})"


def _first_json_error(path: Path) -> str | None:
    first = True
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                if not first:
                    return f"{path}:{lineno}: invalid JSON ({err.msg})"
                break
            first = False
        else:
            return None
    try:
        with _open_text(path) as handle:
            json.load(handle)
    except json.JSONDecodeError as err:
        return f"{path}:{err.lineno}: invalid JSON ({err.msg})"
    return None
