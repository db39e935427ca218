"""The shared batched forward loop: modes restored, gradients only when asked, same loss as the importance probe."""

from __future__ import annotations

import pytest
import torch
from conftest import PROBE_TEXT, tiny_model

from adept.data import IGNORE_INDEX
from adept.forward import BlockBatches, count_targets, forward_batches, next_token_loss_sum
from adept.probe_scores import mean_loss


def padded_batches(tokenizer, batch_size: int = 2) -> list[dict]:
    """Probe-style batches: paragraphs of different lengths, right-padded, padding masked out of the labels."""
    rows = [tokenizer(text)["input_ids"] for text in PROBE_TEXT.split("\n\n")]
    batches = []
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        width = max(map(len, part))
        input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in part])
        attention_mask = (torch.arange(width) < torch.tensor([len(row) for row in part])[:, None]).long()
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        batches.append({"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels})
    return batches


def test_loss_of_padded_batches_is_the_importance_loss(tokenizer):
    model = tiny_model("llama")
    batches = padded_batches(tokenizer)
    total = torch.zeros((), dtype=torch.float64)
    tokens = 0
    for batch, logits in forward_batches(
        model, batches, inputs=("input_ids", "attention_mask"), progress=False, use_cache=False
    ):
        total += next_token_loss_sum(logits, batch["labels"]).double()
        tokens += count_targets(batch["labels"])
    assert tokens == sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    assert float(total) / tokens == mean_loss(model, batches)


def test_modes_and_gradients(tokenizer):
    model = tiny_model("llama").train()
    blocks = {"input_ids": torch.randint(0, 256, (5, 8))}
    for _, logits in forward_batches(model, BlockBatches(blocks, 2), progress=False):
        assert not model.training and not logits.requires_grad
        assert torch.is_grad_enabled()  # only the forward runs without gradients
    assert model.training
    outputs = list(forward_batches(model, BlockBatches(blocks, 2), grad=True, progress=False))
    assert [logits.shape[0] for _, logits in outputs] == [2, 2, 1]
    outputs[0][1].sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_block_batches_of_a_dataset_and_of_tensors():
    import datasets

    rows = {"input_ids": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "labels": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
    from_dataset = BlockBatches(datasets.Dataset.from_dict(rows), 2, ("input_ids", "labels"))
    from_tensors = BlockBatches({key: torch.tensor(value) for key, value in rows.items()}, 2, ("input_ids", "labels"))
    assert len(from_dataset) == len(from_tensors) == 2
    for a, b in zip(from_dataset, from_tensors, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) and a[key].dtype == torch.long for key in a)
    with pytest.raises(ValueError, match="batch_size"):
        BlockBatches(rows, 0)


def test_block_batches_make_labels_of_stored_uint32_blocks(tmp_path, tokenizer):
    """Packed blocks store only uint32 ``input_ids``; asked for labels, a batch gets int64 copies of them."""
    import datasets

    from adept.forward import first_blocks

    path = tmp_path / "c.txt"
    path.write_text(PROBE_TEXT)
    blocks = first_blocks(path, tokenizer, 16, max_blocks=5)
    assert blocks.column_names == ["input_ids"] and blocks.features["input_ids"].feature.dtype == "uint32"
    batches = BlockBatches(blocks, 2, ("input_ids", "labels"))
    assert [batch["input_ids"].shape for batch in batches] == [(2, 16), (2, 16), (1, 16)]
    for index, batch in enumerate(batches):
        assert list(batch) == ["input_ids", "labels"]
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.long
        assert batch["labels"].equal(batch["input_ids"]) and batch["labels"].data_ptr() != batch["input_ids"].data_ptr()
        assert batch["input_ids"].tolist() == blocks[index * 2 : index * 2 + 2]["input_ids"]
    only_labels = BlockBatches(blocks, 4, ("labels",))
    assert list(only_labels[0]) == ["labels"]
    assert only_labels[0]["labels"].tolist() == blocks[:4]["input_ids"]
    with pytest.raises(ValueError, match=r"no column \['token_ids'\]"):
        BlockBatches(datasets.Dataset.from_dict({"input_ids": [[1, 2]]}), 1, ("input_ids", "token_ids"))
