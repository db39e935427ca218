"""Packed blocks for (continual) pretraining: corpora tokenised, joined with EOS and cut into blocks.

`pack_corpus` tokenises with parallel workers, packs in one sequential pass (so block boundaries
never depend on the workers) and stores the blocks in a cache folder fingerprinted by the source
files, the tokenizer and the packing settings, published atomically. `collate_blocks` turns
blocks into a Trainer batch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adept import __version__
from adept.artifacts import artifact_header, read_json, write_json
from adept.corpus import _num_workers, document_from_row, load_corpus, render_chat
from adept.corpus_sources import CorpusSource, check_txt_split, corpus_specs, resolve_corpus
from adept.defaults import DEFAULT_TEXT_FIELD, DEFAULT_TXT_SPLIT

# datasets, pyarrow, numpy, torch and tqdm are imported inside the functions that use them, so
# importing the data modules (`adept.data`, `adept.corpus`) stays cheap.

logger = logging.getLogger(__name__)

TOKENIZE_CHUNK_ROWS = 250_000  # documents per tokenising map: bounds what each worker maps into memory
PACKED_STATS_NAME = "corpus.json"
PACKED_LAYOUT = "blocks.arrow: input_ids uint32, labels in the collator"  # part of the cache fingerprint
BLOCKS_NAME = "blocks.arrow"


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
        doc = document_from_row({name: batch[name][i] for name in names}, text_field, source, index)
        if doc.messages is not None:
            texts.append(render_chat(doc.messages, tokenizer, source.locate(index)))
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
    txt_split: str = DEFAULT_TXT_SPLIT,
    text_field: str = DEFAULT_TEXT_FIELD,
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

    specs = corpus_specs(paths)
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    check_txt_split(txt_split)
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
    txt_split: str = DEFAULT_TXT_SPLIT,
    text_field: str = DEFAULT_TEXT_FIELD,
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
