"""Corpora for probing general competence: loading, tokenising and batching.

Reads `.txt`, `.jsonl`/`.json` (``{"text": ...}`` or ``{"instruction": ..., "output": ...}``
items, loss on the answer only) and local Hugging Face dataset directories, and turns them into
padded batches whose labels mask padding and prompts with -100. The probe set feeds the
importance estimate of paper Sec. 3.1.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adept.config import ProbeConfig

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
TXT_SPLITS = ("paragraph", "line")


@dataclass(frozen=True)
class Document:
    """One training or probe document.

    Either ``text`` (loss on every token) or ``prompt`` + ``answer`` (loss on the answer only).
    ``source`` is ``file:line`` for error messages.
    """

    text: str | None = None
    prompt: str | None = None
    answer: str | None = None
    source: str = ""


def _document_from_record(record: object, where: str) -> Document:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("text"), str):
        return Document(text=record["text"], source=where)
    if isinstance(record.get("instruction"), str) and isinstance(record.get("output"), str):
        prompt = record["instruction"]
        if isinstance(record.get("input"), str) and record["input"]:
            prompt = f"{prompt}\n{record['input']}"
        return Document(prompt=prompt + "\n", answer=record["output"], source=where)
    keys = sorted(record)
    raise ValueError(f"{where}: expected a 'text' field or 'instruction' and 'output' fields, found keys {keys}")


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


def load_documents(path: str | os.PathLike, txt_split: str = "paragraph") -> list[Document]:
    """Read documents from a file or a local Hugging Face dataset directory.

    Args:
        path: ``.txt`` (one document per blank-line separated block with ``txt_split='paragraph'``,
            per non-empty line with ``'line'``), ``.jsonl``, ``.json`` (a list of objects), or a
            directory written by ``datasets.Dataset.save_to_disk``.
        txt_split: how a ``.txt`` file is cut into documents.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        return _load_hf_directory(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if txt_split not in TXT_SPLITS:
            raise ValueError(f"txt_split must be one of {TXT_SPLITS}, got '{txt_split}'")
        return _load_txt(path, txt_split)
    if suffix == ".jsonl":
        docs = [_document_from_record(record, where) for where, record in iter_jsonl(path)]
        return _non_empty(docs, path)
    if suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of objects")
        return _non_empty([_document_from_record(r, f"{path}[{i}]") for i, r in enumerate(records)], path)
    raise ValueError(f"{path}: unsupported corpus format '{suffix}' (use .txt, .jsonl, .json or a dataset directory)")


def _load_txt(path: Path, txt_split: str) -> list[Document]:
    docs: list[Document] = []
    block: list[str] = []
    start = 1
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            stripped = line.rstrip("\n")
            if txt_split == "line":
                if stripped.strip():
                    docs.append(Document(text=stripped, source=f"{path}:{lineno}"))
                continue
            if stripped.strip():
                if not block:
                    start = lineno
                block.append(stripped)
            elif block:
                docs.append(Document(text="\n".join(block), source=f"{path}:{start}"))
                block = []
    if block:
        docs.append(Document(text="\n".join(block), source=f"{path}:{start}"))
    return _non_empty(docs, path)


def _load_hf_directory(path: Path) -> list[Document]:
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: not a dataset directory written by datasets' save_to_disk") from None
    if isinstance(dataset, datasets.DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"{path}: DatasetDict has no 'train' split (splits: {sorted(dataset)})")
        dataset = dataset["train"]
    columns = set(dataset.column_names)
    if "text" not in columns and not {"instruction", "output"} <= columns:
        raise ValueError(f"{path}: dataset needs a 'text' column or 'instruction' and 'output' columns, has {sorted(columns)}")
    return _non_empty([_document_from_record(row, f"{path}[{i}]") for i, row in enumerate(dataset)], path)


def _non_empty(docs: list[Document], path: Path) -> list[Document]:
    if not docs:
        raise ValueError(f"{path}: no documents found")
    return docs


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

    Text documents longer than ``max_length`` are cut into consecutive windows; instruction
    documents keep the prompt (masked) and are truncated to ``max_length``.
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
    if doc.text is not None:
        ids = tokenizer(doc.text)["input_ids"]
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
    path: str | os.PathLike, tokenizer, probe: ProbeConfig | None = None, *, seed: int = 0, txt_split: str = "paragraph"
) -> list[dict]:
    """Documents -> tokenised examples -> padded batches, in one call (``probe``: `ProbeConfig`'s defaults)."""
    probe = probe or ProbeConfig()
    docs = load_documents(path, txt_split=txt_split)
    examples = tokenize_documents(docs, tokenizer, max_length=probe.max_length, max_tokens=probe.max_tokens, seed=seed)
    if not examples:
        raise ValueError(f"{path}: no example with at least two tokens after tokenisation")
    logger.info("probe corpus %s: %d documents -> %d examples", path, len(docs), len(examples))
    return make_batches(examples, probe.batch_size, pad_token_id_of(tokenizer))


# --- packed blocks for (continual) pretraining ---------------------------------------------


def _corpus_fingerprint(paths: Sequence[Path], tokenizer, block_size: int, txt_split: str) -> str:
    """Changes whenever a source file, the tokenizer or the packing changes."""
    import hashlib

    from adept import __version__

    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(tokenizer.get_vocab())).encode())
    digest.update(f"{block_size}|{txt_split}|{tokenizer.eos_token_id}|{__version__}".encode())
    if _block_lead(tokenizer):
        digest.update(b"|blocks open with BOS")
    return digest.hexdigest()[:16]


def _block_lead(tokenizer) -> list[int]:
    """``[bos]`` when the tokenizer puts BOS before every text, else ``[]``."""
    bos = tokenizer.bos_token_id
    return [bos] if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else []


def build_packed_dataset(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    tokenizer,
    block_size: int,
    *,
    cache_dir: str | os.PathLike | None = None,
    num_proc: int | None = None,
    txt_split: str = "paragraph",
):
    """Tokenise documents, join them with EOS and cut the stream into ``block_size`` blocks.

    When the tokenizer opens every text with BOS (Gemma's does), every block opens with BOS too
    and holds ``block_size - 1`` stream tokens: such models are trained with BOS at position 0
    and predict much worse without it (Gemma-3-270M's held-out loss is about 20% higher on
    blocks cut mid-document).

    Returns a ``datasets.Dataset`` with ``input_ids`` and ``labels`` columns (labels equal
    inputs; the model shifts them). With ``cache_dir``, the packed Arrow table is stored under a
    fingerprint of the sources, tokenizer and block size, so a large corpus is tokenised once.
    ``num_proc`` processes tokenise; packing runs in one, so the blocks never depend on it.
    The remainder shorter than a block at the end of each 2000-document batch is dropped.
    """
    import datasets

    path_list = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / f"packed-{_corpus_fingerprint(path_list, tokenizer, block_size, txt_split)}"
        if cache_path.is_dir():
            return datasets.load_from_disk(str(cache_path))
    texts: list[str] = []
    for path in path_list:
        for doc in load_documents(path, txt_split=txt_split):
            texts.append(doc.text if doc.text is not None else f"{doc.prompt}{doc.answer}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token to separate documents")
    lead = _block_lead(tokenizer)

    def tokenize(batch):
        ids = tokenizer(batch["text"])["input_ids"]
        return {"input_ids": [row + [eos] for row in ids]}

    def pack(batch):
        stream = [token for row in batch["input_ids"] for token in row]
        size = block_size - len(lead)
        usable = len(stream) - len(stream) % size
        blocks = [lead + stream[i : i + size] for i in range(0, usable, size)]
        return {"input_ids": blocks, "labels": [list(block) for block in blocks]}

    dataset = datasets.Dataset.from_dict({"text": texts})
    dataset = dataset.map(tokenize, batched=True, remove_columns=["text"], num_proc=num_proc, desc="tokenising")
    dataset = dataset.map(pack, batched=True, batch_size=2000, desc=f"packing into {block_size}-token blocks")
    if len(dataset) == 0:
        raise ValueError(f"{', '.join(map(str, path_list))}: fewer tokens than one block of {block_size}")
    if cache_path is not None:
        tmp = cache_path.with_name(cache_path.name + f".tmp-{os.getpid()}")
        dataset.save_to_disk(str(tmp))
        try:
            os.replace(tmp, cache_path)
        except OSError:
            if not cache_path.is_dir():
                raise
            # Another process (a rank on another node sharing the filesystem) published the same
            # cache first; its content is identical, so keep it and drop ours.
            shutil.rmtree(tmp, ignore_errors=True)
        dataset = datasets.load_from_disk(str(cache_path))
    return dataset


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
