"""The data stage: corpora loaded, tokenised and packed for training, and probe batches for importance.

Its parts, in the order data flows through them: `adept.corpus_sources` (a file, glob or folder
resolved to its files and format; one-line read errors), `adept.corpus` (rows read by ``datasets``
into disk-backed tables, and rows into `Document`s), `adept.packing` (documents tokenised and
packed into fingerprinted, cached blocks for (continual) pretraining) and `adept.probe_batches`
(padded, prompt-masked batches of the importance estimate, paper Sec. 3.1). Their public names
are importable from here too, as scripts and the README import them; `byte_tokenizer` lives here
(it imports tokenizers and transformers inside, so importing this module does not).
"""

from __future__ import annotations

from adept.corpus import Document, iter_jsonl, load_corpus, load_documents
from adept.corpus_sources import CorpusSource, resolve_corpus
from adept.packing import PackedCorpus, build_packed_dataset, collate_blocks, pack_corpus
from adept.probe_batches import (
    IGNORE_INDEX,
    TokenizedExample,
    collate,
    load_probe_batches,
    make_batches,
    pad_token_id_of,
    tokenize_documents,
)

__all__ = [
    "IGNORE_INDEX",
    "CorpusSource",
    "Document",
    "PackedCorpus",
    "TokenizedExample",
    "build_packed_dataset",
    "byte_tokenizer",
    "collate",
    "collate_blocks",
    "iter_jsonl",
    "load_corpus",
    "load_documents",
    "load_probe_batches",
    "make_batches",
    "pack_corpus",
    "pad_token_id_of",
    "resolve_corpus",
    "tokenize_documents",
]


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
