"""Corpora: loading, tokenising and packing for training, and padded probe batches for importance.

A corpus is a file, a glob, a folder of files or a ``save_to_disk`` folder, read by Hugging Face
``datasets`` into disk-backed Arrow tables (jsonl/json, parquet, csv, txt, arrow; compressed or
not). Rows hold text, instruction + output, or chat messages. `pack_corpus` writes packed blocks
for (continual) pretraining into a fingerprinted cache; `load_probe_batches` builds the padded,
prompt-masked batches of the importance estimate (paper Sec. 3.1). No corpus is ever held as a
Python list, so corpora larger than memory work.
"""

from __future__ import annotations

import bisect
import functools
import glob
import hashlib
import json
import logging
import os
import random
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from adept import __version__
from adept.artifacts import artifact_header, read_json, write_json
from adept.config import ProbeConfig

# datasets, pyarrow, numpy and torch are imported inside the functions that use them: this
# module is imported on light paths (`adept --help` through evaluation's `iter_jsonl`).

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
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

ROWS_PER_WORKER = 10_000  # a map forks a worker only per this many rows (with num_proc=None)
BYTES_PER_LOAD_WORKER = 64 << 20  # load_dataset forks a worker only per this many bytes of files
TOKENIZE_CHUNK_ROWS = 250_000  # documents per tokenising map: bounds what each worker maps into memory
PACKED_STATS_NAME = "corpus.json"
PACKED_LAYOUT = "blocks.arrow: input_ids uint32, labels in the collator"  # part of the cache fingerprint
BLOCKS_NAME = "blocks.arrow"


@dataclass(frozen=True)
class Document:
    """One training or probe document.

    Either ``text`` (loss on every token), ``prompt`` + ``answer`` (loss on the answer only) or
    chat ``messages`` (loss on the assistant turns). ``source`` names the file and row (or
    line) for error messages.
    """

    text: str | None = None
    prompt: str | None = None
    answer: str | None = None
    source: str = ""
    messages: tuple[Mapping[str, Any], ...] | None = None


# --- corpus specs: files, globs, folders -------------------------------------------------------


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


def _specs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    specs = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not specs:
        raise ValueError("no corpus given")
    return specs


def _check_txt_split(txt_split: str) -> None:
    if txt_split not in TXT_SPLITS:
        raise ValueError(f"txt_split must be one of {TXT_SPLITS}, got '{txt_split}'")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _num_workers(num_proc: int | None, rows: int) -> int:
    """Processes for a `datasets` map over ``rows`` rows.

    ``num_proc`` when given (at most one per row); with None, the cores available
    (``os.sched_getaffinity``) but only one worker per `ROWS_PER_WORKER` rows, so a small corpus
    is tokenised in this process instead of paying for forked workers.
    """
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"num_proc must be at least 1, got {num_proc}")
    wanted = num_proc if num_proc is not None else min(_cores(), rows // ROWS_PER_WORKER)
    return max(1, min(wanted, rows))


def _load_workers(num_proc: int | None, files: Sequence[Path]) -> int:
    """Processes for `datasets.load_dataset`: at most one per file; with None, one per `BYTES_PER_LOAD_WORKER`."""
    if num_proc is None:
        size = sum(file.stat().st_size for file in files)
        num_proc = min(_cores(), size // BYTES_PER_LOAD_WORKER)
    return max(1, min(num_proc, len(files)))


# --- reading rows ----------------------------------------------------------------------------


def load_corpus(
    spec: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    txt_split: str = "paragraph",
    text_field: str = "text",
    num_proc: int | None = None,
):
    """The rows of one corpus as a disk-backed ``datasets.Dataset``, one row per document.

    Files are read by ``datasets.load_dataset`` with the builder `resolve_corpus` names; its
    Arrow copy goes under ``cache_dir`` (datasets' own cache when None). ``.txt`` files become
    one row per blank-line separated block (``txt_split='paragraph'``; a blank line is empty or
    whitespace only) or per non-empty line (``'line'``), in a ``text_field`` column. Other rows
    are returned as stored; `Document` kinds are told apart per row (see `_document_from_row`).

    Raises:
        ValueError: an unreadable file (naming the file, and the line for invalid JSON), a
            corpus without a ``text_field``, instruction/output or messages column (listing the
            columns found), an empty corpus. FileNotFoundError: a missing file.
    """
    _check_txt_split(txt_split)
    source = resolve_corpus(spec)
    if source.builder == SAVED:
        rows = _load_saved(source)
    else:
        # The text builder's paragraphs are "\n\n"-separated pieces, refined by `_split_paragraphs`.
        options = {"sample_by": txt_split} if source.builder == "text" else {}
        rows = _load_files(source, cache_dir, _load_workers(num_proc, source.files), **options)
    if source.builder == "text":
        workers = _num_workers(num_proc, len(rows))
        options = {"batched": True, "num_proc": workers if workers > 1 else None}
        if txt_split == "paragraph":
            rows = rows.map(_split_paragraphs, remove_columns=rows.column_names, desc="paragraphs", **options)
        else:
            rows = rows.filter(_non_blank, input_columns=["text"], desc="non-empty lines", **options)
        if text_field != "text":
            rows = rows.rename_column("text", text_field)
    _check_columns(source, rows.features, text_field)
    if len(rows) == 0:
        raise ValueError(f"{source.spec}: no documents found (the corpus is empty)")
    return rows


def _load_saved(source: CorpusSource):
    import datasets

    (folder,) = source.files
    try:
        dataset = datasets.load_from_disk(str(folder))
    except FileNotFoundError:
        raise ValueError(f"{folder}: not a dataset folder written by datasets' save_to_disk") from None
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"{folder}: the DatasetDict has no 'train' split (splits: {sorted(dataset)})")
        dataset = dataset["train"]
    return dataset


def _load_files(source: CorpusSource, cache_dir, workers: int, **builder_options):
    import datasets

    try:
        return datasets.load_dataset(
            source.builder,
            data_files=[str(file) for file in source.files],
            split="train",
            cache_dir=None if cache_dir is None else str(cache_dir),
            num_proc=workers if workers > 1 else None,
            **builder_options,
        )
    except FileNotFoundError:
        raise
    except (datasets.exceptions.DatasetsError, ValueError, OSError, EOFError, StopIteration) as err:
        raise _read_error(source, err) from None


# How datasets' builders say that the files hold no row at all (the json builder's StopIteration too).
_NO_DATA = ("corresponds to no data", "at least one example")


def _read_error(source: CorpusSource, err: BaseException) -> ValueError:
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
    import bz2
    import gzip
    import lzma

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


def _split_paragraphs(batch: dict[str, list]) -> dict[str, list]:
    """Blocks of non-blank lines of the text builder's ``"\\n\\n"``-separated rows.

    Every ``"\\n\\n"`` lies inside a run of blank lines, so no block spans two rows, and the
    blocks are those of the whole file (a whitespace-only line separates too).
    """
    documents = []
    for piece in batch["text"]:
        block: list[str] = []
        for line in piece.split("\n"):
            if line.strip():
                block.append(line)
            elif block:
                documents.append("\n".join(block))
                block = []
        if block:
            documents.append("\n".join(block))
    return {"text": documents}


def _non_blank(texts: list[str]) -> list[bool]:
    return [bool(text.strip()) for text in texts]


def _check_columns(source: CorpusSource, features, text_field: str) -> None:
    import datasets

    if text_field in features:
        if features[text_field] not in (datasets.Value("string"), datasets.Value("large_string")):
            raise ValueError(f"{source.spec}: column '{text_field}' holds {features[text_field]}, not text")
    elif not ({"instruction", "output"} <= set(features) or "messages" in features):
        raise ValueError(
            f"{source.spec}: no column '{text_field}' (nor 'instruction' and 'output', nor chat 'messages'); "
            f"the columns are {sorted(features)}"
        )


def _document_from_row(row: Mapping[str, Any], text_field: str, source: CorpusSource, index: int) -> Document:
    """Row ``index`` of ``source`` as a `Document`: ``text_field``; else instruction + output
    (+ input); else chat ``messages``."""
    text = row.get(text_field)
    if isinstance(text, str):
        return Document(text=text, source=source.name(index))
    instruction, output = row.get("instruction"), row.get("output")
    if isinstance(instruction, str) and isinstance(output, str):
        prompt = instruction
        if isinstance(row.get("input"), str) and row["input"]:
            prompt = f"{prompt}\n{row['input']}"
        return Document(prompt=prompt + "\n", answer=output, source=source.name(index))
    messages = row.get("messages")
    if messages is not None:
        if not messages or not all(isinstance(m, Mapping) and isinstance(m.get("role"), str) for m in messages):
            raise ValueError(
                f"{source.locate(index)}: 'messages' must be a non-empty list of {{role, content}} objects"
            )
        return Document(messages=tuple(messages), source=source.name(index))
    keys = sorted(key for key, value in row.items() if value is not None)
    raise ValueError(
        f"{source.locate(index)}: expected a '{text_field}' field, 'instruction' and 'output' fields or chat "
        f"'messages', found keys {keys}"
    )


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for every non-blank line; ``where`` is ``file:line`` for error messages."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: invalid JSON ({err.msg})") from None


class _CorpusDocuments(Sequence):
    """The documents of several loaded corpora, read one row at a time from their Arrow tables."""

    def __init__(self, parts: Sequence[tuple[CorpusSource, Any]], text_field: str):
        self.parts, self.text_field = list(parts), text_field
        self.starts = [0]
        for _, rows in self.parts:
            self.starts.append(self.starts[-1] + len(rows))

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> Document:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        part = bisect.bisect_right(self.starts, index) - 1
        source, rows = self.parts[part]
        local = index - self.starts[part]
        return _document_from_row(rows[local], self.text_field, source, local)


def _corpus_documents(paths, cache_dir: Path, txt_split: str, text_field: str) -> _CorpusDocuments:
    parts = []
    for spec in _specs(paths):
        rows = load_corpus(spec, cache_dir=cache_dir, txt_split=txt_split, text_field=text_field)
        parts.append((resolve_corpus(spec), rows))
    return _CorpusDocuments(parts, text_field)


def load_documents(
    path: str | os.PathLike | Sequence[str | os.PathLike], txt_split: str = "paragraph", text_field: str = "text"
) -> list[Document]:
    """All documents of a corpus as a list: a helper for small corpora (tests, tokenizer training).

    Reads what `load_corpus` reads; `load_probe_batches` and `pack_corpus` never build this list.
    """
    with tempfile.TemporaryDirectory(prefix="adept-documents-") as scratch:
        return list(_corpus_documents(path, Path(scratch), txt_split, text_field))


# --- probe examples --------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def tokenize_documents(
    docs: Sequence[Document],
    tokenizer,
    max_length: int,
    max_tokens: int | None = None,
    seed: int = 0,
) -> list[TokenizedExample]:
    """Tokenise documents in a seeded random order until ``max_tokens`` label tokens are reached.

    ``docs`` is read one document at a time in that order, so it may be a lazy sequence over an
    Arrow table. Text documents longer than ``max_length`` are cut into consecutive windows;
    instruction and chat documents keep their masked prompt and are truncated to ``max_length``.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    examples: list[TokenizedExample] = []
    budget = 0
    for idx in order:
        for example in _tokenize_one(docs[idx], tokenizer, max_length):
            n_targets = sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)
            if n_targets == 0:
                continue
            examples.append(example)
            budget += n_targets
            if max_tokens is not None and budget >= max_tokens:
                return examples
    return examples


def _tokenize_one(doc: Document, tokenizer, max_length: int) -> Iterable[TokenizedExample]:
    eos = tokenizer.eos_token_id
    if doc.messages is not None:
        ids, labels = _tokenize_chat(doc, tokenizer)
        yield TokenizedExample(ids[:max_length], labels[:max_length])
        return
    if doc.text is not None:
        ids = tokenizer(doc.text, verbose=False)["input_ids"]  # long documents are cut into windows below
        if eos is not None:
            ids = ids + [eos]
        for start in range(0, len(ids), max_length):
            window = ids[start : start + max_length]
            if len(window) >= 2:
                yield TokenizedExample(window, list(window))
        return
    prompt = tokenizer(doc.prompt)["input_ids"]
    answer = tokenizer(doc.answer, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    ids = (prompt + answer)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt) + answer)[:max_length]
    yield TokenizedExample(ids, labels)


def _render_chat(
    messages: Sequence[Mapping[str, Any]], tokenizer, where: str, add_generation_prompt: bool = False
) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{where}: chat 'messages' need a tokenizer with a chat template, and this tokenizer has none")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _tokenize_chat(doc: Document, tokenizer) -> tuple[list[int], list[int]]:
    """The chat template's rendering, labelled on the assistant turns only.

    Assistant turn ``i`` spans the characters from the end of ``messages[:i]`` rendered with
    the generation prompt to the end of ``messages[:i+1]``; both must be prefixes of the whole
    rendering. A token is labelled when it starts inside such a span. The template's own
    special tokens stay in the text, so it is tokenised without adding any.
    """
    messages = list(doc.messages)
    full = _render_chat(messages, tokenizer, doc.source)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        # An opening assistant turn has no prefix to render (templates refuse an empty chat).
        before = _render_chat(messages[:i], tokenizer, doc.source, add_generation_prompt=True) if i else ""
        through = _render_chat(messages[: i + 1], tokenizer, doc.source)
        if not (full.startswith(before) and full.startswith(through) and len(before) <= len(through)):
            raise ValueError(
                f"{doc.source}: the chat template does not render the conversation up to message {i} as a prefix "
                "of the whole, so the assistant turns cannot be found"
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    labels = [
        token if end > start and any(lo <= start < hi for lo, hi in spans) else IGNORE_INDEX
        for token, (start, end) in zip(ids, encoded["offset_mapping"])
    ]
    return ids, labels


def collate(examples: Sequence[TokenizedExample], pad_token_id: int, pad_to: int | None = None) -> dict:
    """Right-pad a list of examples into tensors; padded positions get label -100 and mask 0."""
    import torch

    length = max(len(e.input_ids) for e in examples)
    if pad_to is not None:
        length = max(length, pad_to)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def make_batches(examples: Sequence[TokenizedExample], batch_size: int, pad_token_id: int) -> list[dict]:
    """Group examples into padded batches, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [collate(examples[i : i + batch_size], pad_token_id) for i in range(0, len(examples), batch_size)]


def pad_token_id_of(tokenizer) -> int:
    """The id used for padding: the tokenizer's pad token, else EOS, else 0 (masked anyway)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return candidate
    return 0


def load_probe_batches(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer,
    probe: ProbeConfig | None = None,
    *,
    seed: int = 0,
    txt_split: str = "paragraph",
    text_field: str = "text",
) -> list[dict]:
    """Corpus -> tokenised examples -> padded batches, in one call (``probe``: `ProbeConfig`'s defaults).

    Rows are read one at a time in a seeded order until the token budget is met; the Arrow copy
    of the corpus lives in a temporary folder for the call.
    """
    probe = probe or ProbeConfig()
    with tempfile.TemporaryDirectory(prefix="adept-probe-") as scratch:
        docs = _corpus_documents(path, Path(scratch), txt_split, text_field)
        examples = tokenize_documents(docs, tokenizer, probe.max_length, max_tokens=probe.max_tokens, seed=seed)
    if not examples:
        raise ValueError(f"{path}: no example with at least two tokens after tokenisation")
    logger.info("probe corpus %s: %d documents -> %d examples", path, len(docs), len(examples))
    return make_batches(examples, probe.batch_size, pad_token_id_of(tokenizer))


# --- packed blocks for (continual) pretraining ---------------------------------------------


@dataclass
class PackedCorpus:
    """Packed blocks and the statistics of the stream they were cut from.

    ``stream_tokens`` counts the documents' tokens with their EOS (not the BOS that opens each
    block for BOS tokenizers): ``stream_tokens == blocks * (block_size - lead) + dropped_tokens``.
    ``cache_path`` is the cache folder (None when built without ``cache_dir``).
    """

    dataset: Any
    documents: int
    stream_tokens: int
    blocks: int
    dropped_tokens: int
    cache_path: Path | None = None


def _source_files(source: CorpusSource) -> Iterator[Path]:
    for path in source.files:
        yield from (sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])


def _corpus_fingerprint(
    sources: Sequence[CorpusSource], tokenizer, block_size: int, txt_split: str, text_field: str
) -> str:
    """Changes whenever a source file, the tokenizer (and its chat template) or the packing changes."""
    digest = hashlib.sha256()
    digest.update(f"{PACKED_LAYOUT}\n".encode())
    for source in sources:
        digest.update(f"corpus {source.builder}\n".encode())
        for path in _source_files(source):
            stat = path.stat()
            digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    digest.update(f"|{getattr(tokenizer, 'chat_template', None)}".encode())
    digest.update(f"|{block_size}|{txt_split}|{text_field}|{tokenizer.eos_token_id}|{__version__}".encode())
    if _block_lead(tokenizer):
        digest.update(b"|blocks open with BOS")
    return digest.hexdigest()[:16]


def _block_lead(tokenizer) -> list[int]:
    """``[bos]`` when the tokenizer puts BOS before every text, else ``[]``."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def _token_features():
    import datasets

    return datasets.Features({"input_ids": datasets.List(datasets.Value("uint32"))})


def _tokenize_rows(
    batch: dict[str, list], indices: list[int], *, tokenizer, source: CorpusSource, text_field: str, offset: int = 0
) -> dict:
    """A batch of rows -> per-document token ids with EOS (chat renderings without added special tokens)."""
    names = list(batch)
    texts: list[str] = []
    chat: list[bool] = []
    for i, index in enumerate(indices):
        index += offset  # the row's place in the whole corpus, for error messages
        doc = _document_from_row({name: batch[name][i] for name in names}, text_field, source, index)
        if doc.messages is not None:
            texts.append(_render_chat(doc.messages, tokenizer, source.locate(index)))
        else:
            texts.append(doc.text if doc.text is not None else f"{doc.prompt}{doc.answer}")
        chat.append(doc.messages is not None)
    ids: list[list[int]] = [[] for _ in texts]
    for is_chat in (False, True):
        rows = [i for i, flag in enumerate(chat) if flag == is_chat]
        if rows:
            # verbose=False: documents longer than the model's context are expected here (they are cut into blocks)
            encoded = tokenizer([texts[i] for i in rows], add_special_tokens=not is_chat, verbose=False)["input_ids"]
            for i, row in zip(rows, encoded):
                ids[i] = [*row, tokenizer.eos_token_id]
    return {"input_ids": ids}


def _tokenize_corpus(
    source: CorpusSource, rows, tokenizer, text_field: str, num_proc: int | None, work: Path, tag: str
) -> list[Path]:
    """Per-document token ids of one corpus as uint32 Arrow files under ``work``, in corpus order.

    The rows are mapped ``TOKENIZE_CHUNK_ROWS`` at a time: a worker memory-maps its share of
    the rows it tokenises, and those pages count in its resident memory until it exits, so
    bounded chunks keep every worker's memory flat however large the corpus.
    """
    files: list[Path] = []
    for chunk, start in enumerate(range(0, len(rows), TOKENIZE_CHUNK_ROWS)):
        part = rows.select(range(start, min(len(rows), start + TOKENIZE_CHUNK_ROWS)))
        workers = _num_workers(num_proc, len(part))
        name = work / f"tokens-{tag}-{chunk:05d}.arrow"
        try:
            mapped = part.map(
                functools.partial(
                    _tokenize_rows, tokenizer=tokenizer, source=source, text_field=text_field, offset=start
                ),
                batched=True,
                with_indices=True,
                remove_columns=part.column_names,
                features=_token_features(),
                num_proc=workers if workers > 1 else None,
                cache_file_name=str(name),
                load_from_cache_file=False,
                new_fingerprint=hashlib.sha256(f"{tag}|{chunk}|{work}".encode()).hexdigest()[:16],
                desc=f"tokenising {Path(source.spec).name}"
                + (f" (part {chunk + 1})" if len(rows) > TOKENIZE_CHUNK_ROWS else ""),
            )
        except UnicodeDecodeError as err:  # pyarrow's JSON reader does not check UTF-8; reading the rows does
            raise ValueError(f"{source.spec}: not UTF-8 text ({err.reason})") from None
        # One file, or one per worker (named *_00000_of_0000N): in order either way.
        files.extend(sorted({Path(entry["filename"]) for entry in mapped.cache_files}))
        del mapped
    return files


def _pack_stream(
    files: Sequence[Path], block_size: int, lead: Sequence[int], out: Path, documents: int
) -> tuple[int, int, int]:
    """Cut the documents' token stream into blocks in one sequential pass; write them to ``out``.

    Reads the token files record batch by record batch with plain reads (a ListArray's flattened
    values are the stream; memory-mapping them would keep every page read resident), carries the
    tokens short of a block into the next batch, and drops only the final remainder. Returns
    ``(stream_tokens, blocks, dropped_tokens)``.
    """
    import numpy as np
    import pyarrow as pa
    from tqdm.auto import tqdm

    schema = _token_features().arrow_schema
    size = block_size - len(lead)
    rows_per_write = max(1, (1 << 24) // block_size)  # keeps ListArray's int32 offsets far from overflow
    carry = np.empty(0, dtype=np.uint32)
    stream_tokens = blocks = 0
    bar = tqdm(
        total=documents,
        desc=f"packing into {block_size}-token blocks",
        unit="doc",
        disable=os.environ.get("RANK", "0") != "0",
    )
    with bar, pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for path in files:
            with pa.OSFile(str(path), "rb") as source:
                for chunk in pa.ipc.open_stream(source):
                    bar.update(chunk.num_rows)
                    flat = chunk.column(0).flatten().to_numpy(zero_copy_only=False)
                    stream_tokens += len(flat)
                    stream = np.concatenate([carry, flat.astype(np.uint32, copy=False)])
                    full = len(stream) // size
                    body = stream[: full * size].reshape(full, size)
                    if lead:
                        body = np.concatenate([np.tile(np.asarray(lead, dtype=np.uint32), (full, 1)), body], axis=1)
                    for start in range(0, full, rows_per_write):
                        part = body[start : start + rows_per_write]
                        offsets = np.arange(0, part.size + 1, block_size, dtype=np.int32)
                        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(part.ravel()))
                        writer.write_batch(pa.record_batch([column], schema=schema))
                    blocks += full
                    carry = stream[full * size :].copy()
    return stream_tokens, blocks, len(carry)


def _build_blocks(
    sources: Sequence[CorpusSource],
    tokenizer,
    block_size: int,
    lead: Sequence[int],
    *,
    work: Path,
    num_proc: int | None,
    txt_split: str,
    text_field: str,
) -> tuple[Path, dict[str, int]]:
    """Load, tokenise and pack every corpus inside ``work``; the blocks file and the statistics."""
    work.mkdir(parents=True, exist_ok=True)
    token_files: list[Path] = []
    documents = 0
    for k, source in enumerate(sources):
        rows = load_corpus(
            source.spec, cache_dir=work / "hf", txt_split=txt_split, text_field=text_field, num_proc=num_proc
        )
        documents += len(rows)
        token_files += _tokenize_corpus(source, rows, tokenizer, text_field, num_proc, work, str(k))
        del rows
    out = work / BLOCKS_NAME
    stream_tokens, blocks, dropped = _pack_stream(token_files, block_size, lead, out, documents)
    names = ", ".join(source.spec for source in sources)
    if blocks == 0:
        raise ValueError(
            f"{names}: fewer tokens than one block of {block_size} ({stream_tokens} tokens in {documents} documents)"
        )
    logger.info(
        "%s: %d documents, %d tokens -> %d blocks of %d (%d tokens dropped at the end)",
        names,
        documents,
        stream_tokens,
        blocks,
        block_size,
        dropped,
    )
    return out, {"documents": documents, "stream_tokens": stream_tokens, "blocks": blocks, "dropped_tokens": dropped}


def pack_corpus(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer,
    block_size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    txt_split: str = "paragraph",
    text_field: str = "text",
) -> PackedCorpus:
    """Tokenise documents, join them with EOS and cut the stream into ``block_size`` blocks.

    When the tokenizer opens every text with BOS (Gemma's does), every block opens with BOS too
    and holds ``block_size - 1`` stream tokens: such models are trained with BOS at position 0
    and predict much worse without it (Gemma-3-270M's held-out loss is about 20% higher on
    blocks cut mid-document).

    Args:
        paths: one corpus spec or several (see `resolve_corpus`), packed as one stream in order.
        tokenizer: a Hugging Face tokenizer with an EOS token (and a chat template for chat rows).
        block_size: tokens per block.
        cache_dir: where the packed table is stored under a fingerprint of the resolved source
            files (path, size, mtime), the tokenizer, the block size, ``txt_split``,
            ``text_field`` and the package version; it is built in a ``.tmp-HOST-PID`` sibling and
            published by one rename, so a killed build is never seen. Without it, the blocks are
            built in a temporary folder and returned in memory.
        num_proc: tokenising processes (see `_num_workers`); packing is one sequential pass, so
            the blocks never depend on it.
        txt_split, text_field: how rows become documents (see `load_corpus`).

    Returns:
        a `PackedCorpus` whose ``dataset`` has one ``input_ids`` column of uint32 (labels are
        made by `collate_blocks`); only the final remainder shorter than a block is dropped.
    """
    import datasets

    specs = _specs(paths)
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    _check_txt_split(txt_split)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token to separate documents")
    lead = _block_lead(tokenizer)
    sources = [resolve_corpus(spec) for spec in specs]
    options = {"num_proc": num_proc, "txt_split": txt_split, "text_field": text_field}
    if cache_dir is None:
        with tempfile.TemporaryDirectory(prefix="adept-pack-") as scratch:
            blocks_file, stats = _build_blocks(sources, tokenizer, block_size, lead, work=Path(scratch), **options)
            dataset = datasets.Dataset.from_file(str(blocks_file), in_memory=True)
        return PackedCorpus(dataset, **stats)

    fingerprint = _corpus_fingerprint(sources, tokenizer, block_size, txt_split, text_field)
    cache_path = Path(cache_dir) / f"packed-{fingerprint}"
    if not cache_path.is_dir():
        # The host is in the name too: ranks on several nodes may share the cache's filesystem.
        tmp = cache_path.with_name(f"{cache_path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        try:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a killed process that had our PID
            blocks_file, stats = _build_blocks(sources, tokenizer, block_size, lead, work=tmp / "work", **options)
            # The cache is the blocks file itself (memory-mapped when read) and its statistics: a
            # save_to_disk copy would read every block back through memory once more.
            folder = tmp / "dataset"
            folder.mkdir()
            os.replace(blocks_file, folder / BLOCKS_NAME)
            write_json(
                folder / PACKED_STATS_NAME,
                {
                    **artifact_header("packed_corpus"),
                    **stats,
                    "block_size": block_size,
                    "bos_lead": bool(lead),
                    "txt_split": txt_split,
                    "text_field": text_field,
                    "sources": [
                        {"spec": src.spec, "builder": src.builder, "files": [str(f) for f in src.files]}
                        for src in sources
                    ],
                },
            )
            try:
                os.replace(folder, cache_path)
            except OSError:
                if not cache_path.is_dir():
                    raise
                # Another process (a rank on another node sharing the filesystem) published the
                # same cache first; its content is identical, so keep it and drop ours.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    stats = read_json(cache_path / PACKED_STATS_NAME, kind="packed_corpus")
    return PackedCorpus(
        datasets.Dataset.from_file(str(cache_path / BLOCKS_NAME)),
        documents=stats["documents"],
        stream_tokens=stats["stream_tokens"],
        blocks=stats["blocks"],
        dropped_tokens=stats["dropped_tokens"],
        cache_path=cache_path,
    )


def build_packed_dataset(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer,
    block_size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    txt_split: str = "paragraph",
    text_field: str = "text",
):
    """The packed blocks of `pack_corpus` alone: a ``datasets.Dataset`` with a uint32 ``input_ids`` column."""
    return pack_corpus(
        paths, tokenizer, block_size, cache_dir=cache_dir, num_proc=num_proc, txt_split=txt_split, text_field=text_field
    ).dataset


def collate_blocks(rows: Sequence[Mapping[str, Any]]) -> dict:
    """Equal-length packed blocks -> ``{"input_ids", "labels"}`` LongTensors (a Trainer ``data_collator``).

    Labels equal the inputs: the model shifts them. Rows hold uint32 ids as lists or arrays.
    """
    import numpy as np
    import torch

    input_ids = torch.from_numpy(np.stack([np.asarray(row["input_ids"], dtype=np.int64) for row in rows]))
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges, built in code: ids 0-255 are the bytes, then <s>, </s>, <pad>.

    Every byte is one token, so it needs neither training nor a download; tests and benchmarks pair
    it with small random models (a vocabulary of at least 259).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: idx for idx, char in enumerate(sorted(alphabet))}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
