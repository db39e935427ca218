"""Probe batches: padded, prompt-masked batches of a corpus for the importance estimate (paper Sec. 3.1).

Documents are read one at a time in a seeded order until a token budget is met: text documents
are cut into windows with loss on every token, instruction rows keep the loss on the answer
only, chat rows on the assistant turns only. torch is imported only in `collate`, so importing
`adept.data` does not import it.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from adept.config import ProbeConfig
from adept.corpus import Document, corpus_documents, render_chat
from adept.defaults import DEFAULT_TEXT_FIELD, DEFAULT_TXT_SPLIT

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label of a position that carries no loss (PyTorch's cross-entropy default)


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


def _tokenize_chat(doc: Document, tokenizer) -> tuple[list[int], list[int]]:
    """The chat template's rendering, labelled on the assistant turns only.

    Assistant turn ``i`` spans the characters from the end of ``messages[:i]`` rendered with
    the generation prompt to the end of ``messages[:i+1]``; both must be prefixes of the whole
    rendering. A token is labelled when it starts inside such a span. The template's own
    special tokens stay in the text, so it is tokenised without adding any.
    """
    messages = list(doc.messages)
    full = render_chat(messages, tokenizer, doc.source)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        # An opening assistant turn has no prefix to render (templates refuse an empty chat).
        before = render_chat(messages[:i], tokenizer, doc.source, add_generation_prompt=True) if i else ""
        through = render_chat(messages[: i + 1], tokenizer, doc.source)
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
    txt_split: str = DEFAULT_TXT_SPLIT,
    text_field: str = DEFAULT_TEXT_FIELD,
) -> list[dict]:
    """Corpus -> tokenised examples -> padded batches, in one call (``probe``: `ProbeConfig`'s defaults).

    Rows are read one at a time in a seeded order until the token budget is met; the Arrow copy
    of the corpus lives in a temporary folder for the call.
    """
    probe = probe or ProbeConfig()
    with tempfile.TemporaryDirectory(prefix="adept-probe-") as scratch:
        docs = corpus_documents(path, Path(scratch), txt_split, text_field)
        examples = tokenize_documents(docs, tokenizer, probe.max_length, max_tokens=probe.max_tokens, seed=seed)
    if not examples:
        raise ValueError(f"{path}: no example with at least two tokens after tokenisation")
    logger.info("probe corpus %s: %d documents -> %d examples", path, len(docs), len(examples))
    return make_batches(examples, probe.batch_size, pad_token_id_of(tokenizer))
