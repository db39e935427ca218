"""Corpus rows: reading a corpus into a disk-backed Arrow table and its rows into `Document`s.

A corpus (see `adept.corpus_sources.resolve_corpus`) is read by Hugging Face ``datasets``
(jsonl/json, parquet, csv, txt, arrow; compressed or not) without ever being held as a Python
list, so corpora larger than memory work. Rows hold text, instruction + output, or chat
messages. `adept.packing` and `adept.probe_batches` tokenise what this module reads.
"""

from __future__ import annotations

import bisect
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adept.corpus_sources import SAVED, CorpusSource, check_txt_split, corpus_specs, read_error, resolve_corpus
from adept.defaults import DEFAULT_TEXT_FIELD, DEFAULT_TXT_SPLIT

# datasets is imported inside the functions that use it: this module is imported by light ones
# (`adept.benchmarks` for `iter_jsonl`, and through it `adept.results` and `adept.fronts`).

ROWS_PER_WORKER = 10_000  # a map forks a worker only per this many rows (with num_proc=None)
BYTES_PER_LOAD_WORKER = 64 << 20  # load_dataset forks a worker only per this many bytes of files


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
    txt_split: str = DEFAULT_TXT_SPLIT,
    text_field: str = DEFAULT_TEXT_FIELD,
    num_proc: int | None = None,
):
    """The rows of one corpus as a disk-backed ``datasets.Dataset``, one row per document.

    Files are read by ``datasets.load_dataset`` with the builder `resolve_corpus` names; its
    Arrow copy goes under ``cache_dir`` (datasets' own cache when None). ``.txt`` files become
    one row per blank-line separated block (``txt_split='paragraph'``; a blank line is empty or
    whitespace only) or per non-empty line (``'line'``), in a ``text_field`` column. Other rows
    are returned as stored; `Document` kinds are told apart per row (see `document_from_row`).

    Raises:
        ValueError: an unreadable file (naming the file, and the line for invalid JSON), a
            corpus without a ``text_field``, instruction/output or messages column (listing the
            columns found), an empty corpus. FileNotFoundError: a missing file.
    """
    check_txt_split(txt_split)
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
        raise read_error(source, err) from None


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


def document_from_row(row: Mapping[str, Any], text_field: str, source: CorpusSource, index: int) -> Document:
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
        return document_from_row(rows[local], self.text_field, source, local)


def corpus_documents(paths, cache_dir: Path, txt_split: str, text_field: str) -> _CorpusDocuments:
    parts = []
    for spec in corpus_specs(paths):
        rows = load_corpus(spec, cache_dir=cache_dir, txt_split=txt_split, text_field=text_field)
        parts.append((resolve_corpus(spec), rows))
    return _CorpusDocuments(parts, text_field)


def load_documents(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    txt_split: str = DEFAULT_TXT_SPLIT,
    text_field: str = DEFAULT_TEXT_FIELD,
) -> list[Document]:
    """All documents of a corpus as a list: a helper for small corpora (tests, tokenizer training).

    Reads what `load_corpus` reads; `load_probe_batches` and `pack_corpus` never build this list.
    """
    with tempfile.TemporaryDirectory(prefix="adept-documents-") as scratch:
        return list(corpus_documents(path, Path(scratch), txt_split, text_field))


def render_chat(
    messages: Sequence[Mapping[str, Any]], tokenizer, where: str, add_generation_prompt: bool = False
) -> str:
    """Chat ``messages`` rendered by the tokenizer's chat template; ``where`` names the row in the error."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"{where}: chat 'messages' need a tokenizer with a chat template, and this tokenizer has none")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
