"""Token-distribution shift (paper Fig. 5) on tiny models, core functions and ``adept analyze shift``."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PROBE_TEXT, byte_tokenizer, save_tiny_checkpoint, tiny_model

from adept.cli import main
from adept.shift import packed_blocks, ranks_of, summarize_shift, token_shift, top1_tokens

BLOCK = 16


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "heldout.txt"
    path.write_text(PROBE_TEXT)
    return path


def perturbed(model, seed: int = 1, std: float = 0.1):
    copy = tiny_model(seed=0)
    copy.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in copy.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * std)
    return copy


def test_model_against_itself_is_unshifted(corpus, tokenizer):
    model = tiny_model()
    result = token_shift(model, model, tokenizer, corpus, block_size=BLOCK, max_blocks=4, progress=False)
    assert result["positions"] == 4 * BLOCK
    assert result["categories"] == {"unshifted": 1.0, "marginal": 0.0, "shifted": 0.0}
    assert result["changed_top1_share"] == 0.0
    assert result["rank_histogram"] == {"1": 4 * BLOCK, "2": 0, "3": 0, "4-10": 0, ">10": 0}
    assert result["top_shifted_tokens"] == []


def test_perturbed_model_shares_and_histogram(corpus, tokenizer):
    base = tiny_model()
    tuned = perturbed(base)
    result = token_shift(base, tuned, tokenizer, corpus, block_size=BLOCK, max_blocks=None, top_k=5, progress=False)
    positions = result["positions"]
    assert positions % BLOCK == 0 and positions > 4 * BLOCK
    assert sum(result["categories"].values()) == pytest.approx(1.0)
    assert sum(result["rank_histogram"].values()) == positions
    assert result["changed_top1_share"] > 0  # the perturbation did move predictions
    assert result["changed_top1_share"] == pytest.approx(1 - result["categories"]["unshifted"])
    shifted = result["rank_histogram"]["4-10"] + result["rank_histogram"][">10"]
    assert result["categories"]["shifted"] == pytest.approx(shifted / positions)
    top = result["top_shifted_tokens"]
    assert 0 < len(top) <= 5
    assert sum(item["count"] for item in top) <= shifted
    assert [item["count"] for item in top] == sorted((item["count"] for item in top), reverse=True)
    for item in top:
        assert item["share_of_shifted"] == pytest.approx(item["count"] / shifted)
        assert item["token"] == tokenizer.decode([item["token_id"]])


def test_ranks_match_sorting(corpus, tokenizer):
    base, tuned = tiny_model(), perturbed(tiny_model())
    blocks = packed_blocks(tokenizer, corpus, BLOCK, max_blocks=2)
    tuned_top1 = top1_tokens(tuned, blocks, batch_size=1, progress=False)
    ranks = ranks_of(base, blocks, tuned_top1, batch_size=1, progress=False)
    with torch.no_grad():
        order = base(input_ids=blocks).logits.argsort(dim=-1, descending=True)
        assert torch.equal(tuned_top1, tuned(input_ids=blocks).logits.argmax(-1))
    expected = (order == tuned_top1.unsqueeze(-1)).float().argmax(-1) + 1
    assert torch.equal(ranks, expected)


def test_category_boundaries():
    ranks = torch.tensor([1, 2, 3, 4, 10, 11, 50, 4])
    top1 = torch.tensor([65, 66, 67, 68, 68, 69, 68, 70])
    tokenizer = byte_tokenizer()
    result = summarize_shift(ranks, top1, tokenizer, top_k=2)
    assert result["categories"] == {"unshifted": 1 / 8, "marginal": 2 / 8, "shifted": 5 / 8}
    assert result["rank_histogram"] == {"1": 1, "2": 1, "3": 1, "4-10": 3, ">10": 2}
    assert result["top_shifted_tokens"][0] == {
        "token": tokenizer.decode([68]),
        "token_id": 68,
        "count": 3,
        "share_of_shifted": 3 / 5,
    }
    assert len(result["top_shifted_tokens"]) == 2


def test_cli_analyze_shift(tmp_path, corpus, capsys):
    tuned = perturbed(save_tiny_checkpoint(tmp_path / "base"))
    tuned.save_pretrained(tmp_path / "tuned")
    byte_tokenizer().save_pretrained(tmp_path / "tuned")
    out = tmp_path / "shift"
    argv = ["analyze", "shift", "--base", str(tmp_path / "base"), "--tuned", str(tmp_path / "tuned")]
    argv += [
        "--data",
        str(corpus),
        "--output",
        str(out),
        "--block-size",
        str(BLOCK),
        "--max-blocks",
        "3",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert f"token shift: {out / 'shift.json'}" in capsys.readouterr().out
    payload = json.loads((out / "shift.json").read_text())
    assert payload["kind"] == "shift" and payload["schema_version"] == 1
    assert payload["base"] == str(tmp_path / "base") and payload["data"] == str(corpus)
    assert payload["positions"] == 3 * BLOCK
    assert {"changed_top1_share", "categories", "rank_histogram", "top_shifted_tokens"} <= set(payload)
    assert (out / "shift.png").stat().st_size > 0

    missing = ["analyze", "shift", "--base", str(tmp_path / "nope"), "--tuned", str(tmp_path / "tuned")]
    assert main(missing + ["--data", str(corpus), "--output", str(out)]) == 2
    assert "config.json" in capsys.readouterr().err
