"""The committed domain training corpus of the real-model configs (data/real/domain/go_train.jsonl).

It must train on exactly the demo's Gene Ontology training terms, only richer, and never on a
term that the held-out question set asks about or offers as a distractor.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GO_TRAIN = ROOT / "data" / "real" / "domain" / "go_train.jsonl"
GO_HELDOUT_MC = ROOT / "data" / "real" / "benchmarks" / "go_heldout_mc.jsonl"
DEMO_TRAIN = ROOT / "data" / "demo" / "domain" / "train.jsonl"


def _documents(path: Path) -> list[list[str]]:
    """Each document's ``name: definition ...`` paragraphs."""
    return [json.loads(line)["text"].split("\n\n") for line in path.read_text(encoding="utf-8").splitlines()]


def _head(paragraph: str) -> str:
    return paragraph.partition(": ")[0]


def test_no_heldout_choice_is_a_trained_term():
    choices = {
        c.lower()
        for line in GO_HELDOUT_MC.read_text(encoding="utf-8").splitlines()
        for c in json.loads(line)["choices"]
    }
    assert len(choices) > 1000  # answers and distractors of the 500 questions
    heads = {_head(p).lower() for doc in _documents(GO_TRAIN) for p in doc}
    assert heads and not choices & heads


def test_same_terms_as_the_demo_split_in_the_same_order_only_richer():
    demo, real = _documents(DEMO_TRAIN), _documents(GO_TRAIN)
    assert [[_head(p) for p in doc] for doc in real] == [[_head(p) for p in doc] for doc in demo]
    pairs = [(rich, plain) for r, d in zip(real, demo) for rich, plain in zip(r, d)]
    assert all(rich.startswith(plain) for rich, plain in pairs)  # the demo's paragraph, then added sentences
    assert sum(len(rich) > len(plain) for rich, plain in pairs) > 0.9 * len(pairs)
