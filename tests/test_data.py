"""Probe corpora: every format, prompt masking, padding never counted, errors name the line."""

from __future__ import annotations

import json

import pytest

from adept.config import ProbeConfig
from adept.data import IGNORE_INDEX, load_documents, load_probe_batches, make_batches, tokenize_documents


def test_txt_paragraphs_and_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsame doc\n\n\nsecond doc\n")
    docs = load_documents(path)
    assert [d.text for d in docs] == ["first line\nsame doc", "second doc"]
    assert docs[1].source.endswith("a.txt:5")
    assert [d.text for d in load_documents(path, txt_split="line")] == ["first line", "same doc", "second doc"]


def test_jsonl_text_and_instruction(tmp_path, tokenizer):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "plain text"}) + "\n\n" + json.dumps({"instruction": "Q?", "output": "A!"}) + "\n")
    docs = load_documents(path)
    assert docs[0].text == "plain text" and docs[1].prompt == "Q?\n" and docs[1].answer == "A!"
    examples = tokenize_documents(docs[1:], tokenizer, max_length=64)
    (example,) = examples
    prompt_len = len(tokenizer("Q?\n")["input_ids"])
    assert example.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert example.labels[prompt_len:] == example.input_ids[prompt_len:]
    assert tokenizer.decode(example.input_ids[prompt_len:-1]) == "A!"


def test_json_list_and_hf_directory(tmp_path):
    import datasets

    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    assert [d.text for d in load_documents(path)] == ["one", "two"]
    datasets.Dataset.from_dict({"text": ["x y", "z"]}).save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in load_documents(tmp_path / "ds")] == ["x y", "z"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": \n', r"a\.jsonl:2: invalid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', r"a\.jsonl:2: expected a 'text' field"),
        ("[1, 2]\n", r"a\.jsonl:1: expected a JSON object"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "a.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_documents(path)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_documents(tmp_path / "nope.txt")
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported corpus format"):
        load_documents(tmp_path / "a.csv")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no documents"):
        load_documents(tmp_path / "empty.txt")


def test_budget_seed_and_padding(probe_file, tokenizer):
    docs = load_documents(probe_file)
    full = tokenize_documents(docs, tokenizer, max_length=32, seed=0)
    again = tokenize_documents(docs, tokenizer, max_length=32, seed=0)
    other = tokenize_documents(docs, tokenizer, max_length=32, seed=1)
    assert [e.input_ids for e in full] == [e.input_ids for e in again]
    assert [e.input_ids for e in full] != [e.input_ids for e in other]
    assert all(len(e.input_ids) <= 32 for e in full)
    limited = tokenize_documents(docs, tokenizer, max_length=32, max_tokens=50, seed=0)
    counted = sum(len(e.labels) - 1 for e in limited)
    assert 50 <= counted < 50 + 32 and len(limited) < len(full)
    batches = make_batches(full, 3, tokenizer.pad_token_id)
    for batch in batches:
        pads = batch["attention_mask"] == 0
        assert (batch["labels"][pads] == IGNORE_INDEX).all()
        assert (batch["input_ids"][pads] == tokenizer.pad_token_id).all()
    assert sum(int(b["attention_mask"].sum()) for b in batches) == sum(len(e.input_ids) for e in full)


def test_load_probe_batches(probe_file, tokenizer):
    batches = load_probe_batches(probe_file, tokenizer, ProbeConfig(max_length=40, max_tokens=None, batch_size=4))
    assert batches[0]["input_ids"].shape[0] == 4


def test_parallel_tokenisation_packs_the_same_blocks(tmp_path, tokenizer):
    """Workers tokenise; packing stays in one process, so block boundaries never move (2500
    documents cross the 2000-document packing batch)."""
    from adept.data import build_packed_dataset

    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"Document {i} says {'abc ' * (i % 7)}."}) + "\n" for i in range(2500)))
    serial = build_packed_dataset(path, tokenizer, 16)
    parallel = build_packed_dataset(path, tokenizer, 16, num_proc=2)
    assert len(serial) > 2000 // 16
    assert parallel["input_ids"] == serial["input_ids"]
    assert parallel["labels"] == serial["labels"]


def test_blocks_open_with_bos_when_the_tokenizer_adds_one(tmp_path):
    """Gemma-style tokenizers put BOS before every text: then every packed block starts with it."""
    from tokenizers import processors

    from adept.data import build_packed_dataset

    from conftest import byte_tokenizer

    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Document {i} has a few words in it." for i in range(12)))
    plain = byte_tokenizer()
    with_bos = byte_tokenizer()
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 256)])
    assert with_bos("a").input_ids == [256, *plain("a").input_ids] and len(plain("a").input_ids) == 1

    blocks = list(build_packed_dataset(path, plain, 16)["input_ids"])
    led = list(build_packed_dataset(path, with_bos, 16)["input_ids"])
    assert all(len(block) == 16 for block in blocks + led)
    assert sum(block[0] == 256 for block in blocks) == 0  # no BOS in the plain stream at all
    assert all(block[0] == 256 for block in led)
    # Past the leading BOS, the blocks are the BOS tokenizer's stream, in order, nothing lost or repeated.
    stream = [token for text in path.read_text().split("\n\n") for token in with_bos(text).input_ids + [257]]
    body = [token for block in led for token in block[1:]]
    assert body == stream[: len(body)] and len(stream) - len(body) < 15
