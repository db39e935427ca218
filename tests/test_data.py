"""Corpora: every format and spec gives the same documents and blocks, probe masking, packing
with carry-over, the packed cache, and errors that name the file in one line."""

from __future__ import annotations

import bz2
import gzip
import json
import shutil

import pytest

from adept.config import ProbeConfig
from adept.data import (
    IGNORE_INDEX,
    Document,
    build_packed_dataset,
    collate_blocks,
    load_corpus,
    load_documents,
    load_probe_batches,
    make_batches,
    pack_corpus,
    resolve_corpus,
    tokenize_documents,
)


def _old_txt_documents(text: str, txt_split: str) -> list[str]:
    """The documents the previous line-by-line reader made of a .txt file: the reference semantics."""
    docs, block = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if txt_split == "line":
            if line.strip():
                docs.append(line)
            continue
        if line.strip():
            block.append(line)
        elif block:
            docs.append("\n".join(block))
            block = []
    if block:
        docs.append("\n".join(block))
    return docs


TRICKY_TXT = (
    "\n\n  \nfirst line\n  indented same doc  \n\n\n\nsecond doc\n \t \nthird\r\nstill third\r\n\r\n"
    "fourth\n\n\n\n\nfifth has\n\n\nno trailing newline"
)


def test_txt_paragraphs_and_lines_keep_the_old_documents(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\nsame doc\n\n\nsecond doc\n")
    docs = load_documents(path)
    assert [d.text for d in docs] == ["first line\nsame doc", "second doc"]
    assert docs[1].source.endswith("a.txt[1]")
    assert [d.text for d in load_documents(path, txt_split="line")] == ["first line", "same doc", "second doc"]

    tricky = tmp_path / "tricky.txt"
    tricky.write_bytes(TRICKY_TXT.encode())
    for split in ("paragraph", "line"):
        expected = _old_txt_documents(TRICKY_TXT, split)
        assert [d.text for d in load_documents(tricky, txt_split=split)] == expected
    assert len(_old_txt_documents(TRICKY_TXT, "paragraph")) == 6  # whitespace-only lines separate too


def test_jsonl_text_and_instruction(tmp_path, tokenizer):
    path = tmp_path / "a.jsonl"
    path.write_text(
        json.dumps({"text": "plain text"}) + "\n\n" + json.dumps({"instruction": "Q?", "output": "A!"}) + "\n"
    )
    docs = load_documents(path)
    assert docs[0].text == "plain text" and docs[1].prompt == "Q?\n" and docs[1].answer == "A!"
    examples = tokenize_documents(docs[1:], tokenizer, max_length=64)
    (example,) = examples
    prompt_len = len(tokenizer("Q?\n")["input_ids"])
    assert example.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    assert example.labels[prompt_len:] == example.input_ids[prompt_len:]
    assert tokenizer.decode(example.input_ids[prompt_len:-1]) == "A!"


def test_json_list_and_saved_datasets(tmp_path):
    import datasets

    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": "one"}, {"text": "two"}]))
    assert [d.text for d in load_documents(path)] == ["one", "two"]
    datasets.Dataset.from_dict({"text": ["x y", "z"]}).save_to_disk(str(tmp_path / "ds"))
    assert [d.text for d in load_documents(tmp_path / "ds")] == ["x y", "z"]
    assert resolve_corpus(tmp_path / "ds").builder == "load_from_disk"
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["t"]}), "test": datasets.Dataset.from_dict({"text": ["u"]})}
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    assert [d.text for d in load_documents(tmp_path / "dict")] == ["t"]
    splits.pop("train")
    splits.save_to_disk(str(tmp_path / "no_train"))
    with pytest.raises(ValueError, match=r"no_train: the DatasetDict has no 'train' split \(splits: \['test'\]\)"):
        load_documents(tmp_path / "no_train")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\n{"text": \n', r"a\.jsonl:2: invalid JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', r"a\.jsonl:2: expected a 'text' field.*found keys \['body'\]"),
        ('{"text": "ok"}\n\n  \n{"body": "x"}\n', r"a\.jsonl:4: expected a 'text' field"),  # blank lines hold no row
        ("[1, 2]\n", r"a\.jsonl: column 'text' holds .*int64.*, not text"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "a.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_documents(path)
    assert "\n" not in str(err.value)


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


def test_probe_batches_are_the_old_ones(tmp_path, tokenizer):
    """Rows read one at a time in the seeded order give the batches the in-memory list gave."""
    txt = tmp_path / "probe.txt"
    txt.write_bytes(TRICKY_TXT.encode())
    jsonl = tmp_path / "probe.jsonl"
    records = [
        {"text": f"text {i} " * (i % 9)}
        if i % 3
        else {"instruction": f"Q{i}?", "input": "ctx" * (i % 2), "output": f"A{i}"}
        for i in range(40)
    ]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    probe = ProbeConfig(max_length=24, max_tokens=300, batch_size=4)
    for path, reference in [
        (txt, [Document(text=t) for t in _old_txt_documents(TRICKY_TXT, "paragraph")]),
        (
            jsonl,
            [
                Document(text=r["text"])
                if "text" in r
                else Document(
                    prompt=r["instruction"] + (f"\n{r['input']}" if r["input"] else "") + "\n", answer=r["output"]
                )
                for r in records
            ],
        ),
    ]:
        for seed in (0, 3):
            got = load_probe_batches(path, tokenizer, probe, seed=seed)
            expected = make_batches(
                tokenize_documents(reference, tokenizer, 24, max_tokens=300, seed=seed), 4, tokenizer.pad_token_id
            )
            assert len(got) == len(expected) > 1
            for a, b in zip(got, expected, strict=True):
                assert all(a[key].equal(b[key]) for key in ("input_ids", "labels", "attention_mask"))


def _texts(n: int = 60) -> list[str]:
    return [f'Doc {i}, "quoted" text {"abc " * (i % 5)}and more' for i in range(n)]


def _write_jsonl(path, texts, key="text"):
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts))
    return path


def test_every_format_and_spec_packs_the_same_blocks(tmp_path, tokenizer):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = _texts()
    reference = list(build_packed_dataset(_write_jsonl(tmp_path / "one.jsonl", texts), tokenizer, 16)["input_ids"])
    assert len(reference) > 40

    pq.write_table(pa.table({"text": texts[:25]}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": texts[25:]}), tmp_path / "b.parquet")
    shards = tmp_path / "shards" / "nested"
    shards.mkdir(parents=True)
    _write_jsonl(tmp_path / "shards" / "00.jsonl", texts[:30])
    _write_jsonl(shards / "01.jsonl", texts[30:])
    (tmp_path / "shards" / ".hidden.parquet").write_text("skipped")
    (tmp_path / "shards" / "README.md").write_text("skipped too")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps({"text": t}) + "\n" for t in texts))
    with bz2.open(tmp_path / "c.txt.bz2", "wt") as handle:
        handle.write("\n".join(texts) + "\n")
    datasets.Dataset.from_dict({"text": texts}).to_csv(tmp_path / "c.csv", index=False)
    (tmp_path / "c.txt").write_text("\n\n".join(texts) + "\n")
    (tmp_path / "lines.txt").write_text("\n".join(texts) + "\n")
    datasets.Dataset.from_dict({"text": texts, "id": list(range(len(texts)))}).save_to_disk(str(tmp_path / "saved"))
    table = pa.table({"text": texts})
    with pa.OSFile(str(tmp_path / "c.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)

    specs = {
        "parquet glob": [str(tmp_path / "*.parquet")],
        "parquet files": [tmp_path / "a.parquet", tmp_path / "b.parquet"],
        "folder": [tmp_path / "shards"],
        "jsonl.gz": [tmp_path / "c.jsonl.gz"],
        "csv": [tmp_path / "c.csv"],
        "txt": [tmp_path / "c.txt"],
        "txt.bz2 by line": [tmp_path / "c.txt.bz2"],
        "saved": [tmp_path / "saved"],
        "arrow": [tmp_path / "c.arrow"],
    }
    assert [f.name for f in resolve_corpus(tmp_path / "shards").files] == ["00.jsonl", "01.jsonl"]
    for name, spec in specs.items():
        split = "line" if "line" in name else "paragraph"
        packed = pack_corpus(spec, tokenizer, 16, txt_split=split)
        assert list(packed.dataset["input_ids"]) == reference, name
        assert packed.documents == len(texts), name
    assert list(build_packed_dataset(tmp_path / "lines.txt", tokenizer, 16, txt_split="line")["input_ids"]) == reference


def test_text_field_and_missing_column(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = _texts(30)
    reference = list(build_packed_dataset(_write_jsonl(tmp_path / "ref.jsonl", texts), tokenizer, 16)["input_ids"])
    pq.write_table(pa.table({"body": texts, "id": list(range(30))}), tmp_path / "body.parquet")
    assert (
        list(build_packed_dataset(tmp_path / "body.parquet", tokenizer, 16, text_field="body")["input_ids"])
        == reference
    )
    docs = load_documents(_write_jsonl(tmp_path / "body.jsonl", texts, key="body"), text_field="body")
    assert [d.text for d in docs] == texts
    with pytest.raises(ValueError, match=r"body\.parquet: no column 'text' .*the columns are \['body', 'id'\]"):
        build_packed_dataset(tmp_path / "body.parquet", tokenizer, 16)
    with pytest.raises(ValueError, match=r"no column 'content' .*the columns are \['body'\]"):
        load_documents(tmp_path / "body.jsonl", text_field="content")


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def test_chat_messages_loss_on_assistant_turns_only(tmp_path, tokenizer):
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "Six, é."},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": conversation}) + "\n")
    with pytest.raises(ValueError, match=r"chat\.jsonl\[0\]: chat 'messages' need a tokenizer with a chat template"):
        load_probe_batches(path, tokenizer)
    with pytest.raises(ValueError, match=r"chat\.jsonl:1: chat 'messages' need a tokenizer with a chat template"):
        build_packed_dataset(path, tokenizer, 8)

    tokenizer.chat_template = CHAT_TEMPLATE
    (batch,) = load_probe_batches(path, tokenizer, ProbeConfig(max_length=512, max_tokens=None, batch_size=4))
    rendered = "".join(f"<{m['role']}>{m['content']}</s>" for m in conversation)
    assert batch["input_ids"][0].tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    labels = batch["labels"][0]
    targets = labels[labels != IGNORE_INDEX].tolist()
    assert targets == tokenizer("4</s>Six, é.</s>", add_special_tokens=False)["input_ids"]
    # the two assistant turns are where they should be: right after each "<assistant>"
    ids = batch["input_ids"][0].tolist()
    opener = tokenizer("<assistant>", add_special_tokens=False)["input_ids"]
    starts = [i + len(opener) for i in range(len(ids)) if ids[i : i + len(opener)] == opener]
    assert [i for i in range(len(ids)) if labels[i] != IGNORE_INDEX][:1] == starts[:1] and len(starts) == 2

    packed = pack_corpus(path, tokenizer, 8)  # packed corpora train on the whole rendering
    stream = tokenizer(rendered, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert packed.stream_tokens == len(stream)
    assert [t for block in packed.dataset["input_ids"] for t in block] == stream[: packed.blocks * 8]


def test_carry_over_drops_only_the_final_remainder(tmp_path, tokenizer):
    """2500 documents span three 1000-row reads; the blocks are the naive pack of the whole stream."""
    texts = [f"d{i} " + "xyz" * (i % 11) for i in range(2500)]
    path = _write_jsonl(tmp_path / "c.jsonl", texts)
    packed = pack_corpus(path, tokenizer, 37)
    stream = [t for text in texts for t in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
    assert packed.documents == 2500
    assert packed.stream_tokens == len(stream) == packed.blocks * 37 + packed.dropped_tokens
    assert packed.dropped_tokens == len(stream) % 37 and 0 <= packed.dropped_tokens < 37
    assert packed.blocks == len(packed.dataset) == len(stream) // 37
    naive = [stream[i : i + 37] for i in range(0, len(stream) - 36, 37)]
    assert list(packed.dataset["input_ids"]) == naive


def test_chunked_tokenisation_packs_the_same_blocks_and_names_rows(tmp_path, tokenizer, monkeypatch):
    """Large corpora are tokenised a chunk of rows at a time: the blocks do not move, and a bad row
    is still named by its place in the whole corpus."""
    from adept import packing as data

    texts = [f"Doc {i} " + "pq" * (i % 9) for i in range(500)]
    path = _write_jsonl(tmp_path / "c.jsonl", texts)
    whole = pack_corpus(path, tokenizer, 23)
    monkeypatch.setattr(data, "TOKENIZE_CHUNK_ROWS", 64)
    chunked = pack_corpus(path, tokenizer, 23, num_proc=2)
    assert list(chunked.dataset["input_ids"]) == list(whole.dataset["input_ids"])
    assert (chunked.stream_tokens, chunked.dropped_tokens) == (whole.stream_tokens, whole.dropped_tokens)
    rows = [{"text": t} for t in texts[:300]] + [{"text": None}] + [{"text": "x"}]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="bad.jsonl:301"):
        pack_corpus(bad, tokenizer, 23)


def test_parallel_tokenisation_packs_the_same_blocks(tmp_path, tokenizer):
    """Workers tokenise; packing is one pass, so block boundaries never move."""
    path = _write_jsonl(tmp_path / "corpus.jsonl", [f"Document {i} says {'abc ' * (i % 7)}." for i in range(2500)])
    serial = pack_corpus(path, tokenizer, 16, num_proc=1)
    parallel = pack_corpus(path, tokenizer, 16, num_proc=2)
    assert serial.blocks > 2000 // 16
    assert list(parallel.dataset["input_ids"]) == list(serial.dataset["input_ids"])
    assert (parallel.documents, parallel.stream_tokens, parallel.dropped_tokens) == (
        serial.documents,
        serial.stream_tokens,
        serial.dropped_tokens,
    )


def test_worker_rule_keeps_small_corpora_in_process(monkeypatch):
    from adept import corpus as data

    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert data._num_workers(None, 10) == 1
    assert data._num_workers(None, 19_999) == 1
    assert data._num_workers(None, 25_000) == 2
    assert data._num_workers(None, 10**7) == 8
    assert data._num_workers(4, 3) == 3 and data._num_workers(2, 100) == 2
    with pytest.raises(ValueError, match="num_proc"):
        data._num_workers(0, 100)


def test_blocks_are_uint32_without_labels_and_the_collator_makes_them(tmp_path, tokenizer):
    import datasets
    import numpy as np
    import torch

    packed = pack_corpus(_write_jsonl(tmp_path / "c.jsonl", _texts()), tokenizer, 16, cache_dir=tmp_path / "cache")
    for dataset in (packed.dataset, build_packed_dataset(tmp_path / "c.jsonl", tokenizer, 16)):
        assert dataset.column_names == ["input_ids"]
        assert dataset.features["input_ids"] == datasets.List(datasets.Value("uint32"))
        assert dataset.data.schema.field("input_ids").type.value_type == "uint32"
    rows = [packed.dataset[i] for i in range(3)]
    batch = collate_blocks(rows)
    assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
    assert batch["input_ids"].tolist() == [row["input_ids"] for row in rows] == batch["labels"].tolist()
    assert batch["labels"].data_ptr() != batch["input_ids"].data_ptr()
    arrays = [{"input_ids": np.asarray(row["input_ids"], dtype=np.uint32)} for row in rows]
    assert collate_blocks(arrays)["input_ids"].equal(batch["input_ids"])


def test_cache_is_fingerprinted_and_published_atomically(tmp_path, tokenizer, monkeypatch):
    from adept import packing as data

    path = _write_jsonl(tmp_path / "c.jsonl", _texts())
    cache = tmp_path / "cache"
    first = pack_corpus(path, tokenizer, 16, cache_dir=cache)
    (entry,) = cache.iterdir()
    assert entry == first.cache_path and entry.name.startswith("packed-")
    stats = json.loads((entry / "corpus.json").read_text())
    assert (stats["documents"], stats["blocks"], stats["dropped_tokens"]) == (60, first.blocks, first.dropped_tokens)
    assert {p.name for p in entry.iterdir()} == {"corpus.json", "blocks.arrow"}
    assert not list(entry.glob("tokens*")) and not (entry / "work").exists()

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(data, "_build_blocks", no_rebuild)
    again = pack_corpus(path, tokenizer, 16, cache_dir=cache)
    assert list(again.dataset["input_ids"]) == list(first.dataset["input_ids"]) and again.documents == 60
    with pytest.raises(AssertionError, match="rebuilt"):  # another block size is another fingerprint
        pack_corpus(path, tokenizer, 17, cache_dir=cache)
    with pytest.raises(AssertionError, match="rebuilt"):
        pack_corpus(path, tokenizer, 16, cache_dir=cache, text_field="body")
    monkeypatch.undo()

    # Another process publishes the same cache while we build: ours is dropped, theirs is read.
    other = tmp_path / "other"
    real_build = data._build_blocks

    def racing_build(*args, **kwargs):
        result = real_build(*args, **kwargs)
        shutil.copytree(entry, other / entry.name)
        return result

    monkeypatch.setattr(data, "_build_blocks", racing_build)
    raced = pack_corpus(path, tokenizer, 16, cache_dir=other)
    assert [p.name for p in other.iterdir()] == [entry.name]
    assert list(raced.dataset["input_ids"]) == list(first.dataset["input_ids"])


def test_a_failing_build_leaves_nothing_in_the_cache(tmp_path, tokenizer, monkeypatch):
    from adept import packing as data

    good = _write_jsonl(tmp_path / "good.jsonl", _texts())
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(20)) + json.dumps({"other": 1}) + "\n")
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"bad\.jsonl:21: expected a 'text' field"):
        pack_corpus([good, bad], tokenizer, 16, cache_dir=cache)
    assert list(cache.iterdir()) == []

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(data, "_pack_stream", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        pack_corpus(good, tokenizer, 16, cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_blocks_open_with_bos_when_the_tokenizer_adds_one(tmp_path):
    """Gemma-style tokenizers put BOS before every text: then every packed block starts with it."""
    from conftest import byte_tokenizer
    from tokenizers import processors

    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"Document {i} has a few words in it." for i in range(12)))
    plain = byte_tokenizer()
    with_bos = byte_tokenizer()
    with_bos.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 256)]
    )
    assert with_bos("a").input_ids == [256, *plain("a").input_ids] and len(plain("a").input_ids) == 1

    blocks = list(build_packed_dataset(path, plain, 16)["input_ids"])
    led_corpus = pack_corpus(path, with_bos, 16)
    led = list(led_corpus.dataset["input_ids"])
    assert all(len(block) == 16 for block in blocks + led)
    assert sum(block[0] == 256 for block in blocks) == 0  # no BOS in the plain stream at all
    assert all(block[0] == 256 for block in led)
    # Past the leading BOS, the blocks are the BOS tokenizer's stream, in order, nothing lost or repeated.
    stream = [token for text in path.read_text().split("\n\n") for token in with_bos(text).input_ids + [257]]
    body = [token for block in led for token in block[1:]]
    assert body == stream[: len(body)]
    assert led_corpus.stream_tokens == len(stream) and led_corpus.dropped_tokens == len(stream) - len(body) < 15


def _corrupt_parquet(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    return tmp_path / "bad.parquet"


def _mixed_folder(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    _write_jsonl(folder / "a.jsonl", ["x"])
    (folder / "b.csv").write_text("text\ny\n")
    return folder


def _unreadable_folder(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.md").write_text("# not a corpus")
    return folder


def _columns_differ(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    _write_jsonl(folder / "a.jsonl", ["x"])
    (folder / "b.jsonl").write_text(json.dumps({"instruction": "q", "output": "o"}) + "\n")
    return folder


def _not_utf8(tmp_path):
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    return tmp_path / "latin.jsonl"


def _short(tmp_path):
    return _write_jsonl(tmp_path / "short.jsonl", ["tiny", "docs"])


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda tmp: tmp / "nope.txt", FileNotFoundError, r"nope\.txt: no such file or directory"),
        (lambda tmp: str(tmp / "data" / "*.jsonl.gz"), ValueError, r"data/\*\.jsonl\.gz: the glob matches no file"),
        (_unreadable_folder, ValueError, r"notes: a folder with no readable corpus file \(1 files; supported: \.jsonl"),
        (_mixed_folder, ValueError, r"mixed: mixes corpus formats: csv \(b\.csv\), json \(a\.jsonl\)"),
        (
            lambda tmp: (tmp / "a.docx").write_text("x") and tmp / "a.docx",
            ValueError,
            r"a\.docx: unsupported corpus format '\.docx' \(supported: \.jsonl, \.json, \.parquet, \.csv, \.txt, "
            r"\.arrow",
        ),
        (
            lambda tmp: (tmp / "a.parquet.gz").write_text("x") and tmp / "a.parquet.gz",
            ValueError,
            r"unsupported corpus format '\.parquet\.gz'",
        ),
        (
            lambda tmp: (tmp / "empty.txt").write_text("\n \n") and tmp / "empty.txt",
            ValueError,
            r"empty\.txt: no documents found",
        ),
        (
            lambda tmp: (tmp / "empty.jsonl").write_text("") is not None and tmp / "empty.jsonl",
            ValueError,
            r"empty\.jsonl: no documents found",
        ),
        (_corrupt_parquet, ValueError, r"bad\.parquet: cannot be read as parquet \("),
        (
            lambda tmp: (tmp / "l.json").write_text('[{"text": "a"},\n {"text": }]') and tmp / "l.json",
            ValueError,
            r"l\.json:2: invalid JSON",
        ),
        (
            _columns_differ,
            ValueError,
            r"shards/b\.jsonl: its columns \['instruction', 'output'\] differ from those of "
            r".*shards/a\.jsonl \(\['text'\]\)",
        ),
        (_not_utf8, ValueError, r"latin\.jsonl: not UTF-8 text"),
        (_short, ValueError, r"short\.jsonl: fewer tokens than one block of 64 \(10 tokens in 2 documents\)"),
    ],
)
def test_errors_name_the_file_in_one_line(tmp_path, tokenizer, make, error, message):
    spec = make(tmp_path)
    with pytest.raises(error, match=message) as err:
        pack_corpus(spec, tokenizer, 64)
    assert "\n" not in str(err.value)
    assert list(tmp_path.glob("**/*.tmp-*")) == []


def test_load_corpus_is_disk_backed_under_the_cache_dir(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", _texts(5))
    rows = load_corpus(path, cache_dir=tmp_path / "hf")
    assert len(rows) == 5 and rows.cache_files
    assert all(str(f["filename"]).startswith(str(tmp_path / "hf")) for f in rows.cache_files)
