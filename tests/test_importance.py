"""General-competence importance: determinism, identities score zero, a scaled layer ranks first."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ARCHITECTURES, tiny_model

from adept.architectures import get_architecture
from adept.data import collate, load_documents, make_batches, tokenize_documents
from adept.expansion import expand_model, plan_expansion
from adept.importance import ImportanceResult, compute_importance, rank_aggregate
from adept.probe_scores import bypass_layer, layer_masking_scores, mean_loss, unit_gradient_scores


@pytest.fixture
def batches(probe_file, tokenizer):
    examples = tokenize_documents(load_documents(probe_file), tokenizer, max_length=48, seed=0)
    return make_batches(examples, batch_size=2, pad_token_id=tokenizer.pad_token_id)


def test_deterministic_and_complete(batches):
    model = tiny_model("llama")
    first = compute_importance(model, batches, progress=False).to_dict()
    second = compute_importance(model, batches, progress=False).to_dict()
    assert json.dumps(first) == json.dumps(second)
    assert set(first["layer_ranking"]) == {"masking", "grad_weight", "rank", "fisher"}
    assert sorted(first["layer_ranking"]["masking"]) == [0, 1, 2, 3]
    assert len(first["unit_grad_weight"]) == 4
    assert len(first["unit_names"]) == 16  # llama with biases: 7 weights + 7 biases + 2 norms
    assert all(v > 0 for row in first["unit_grad_weight"] for v in row)


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gemma2"])
def test_fresh_copy_scores_zero_except_its_silencing_tensors(batches, model_type):
    model = tiny_model(model_type)
    plan = plan_expansion(4, [1])
    expanded = expand_model(model, plan).eval()
    result = compute_importance(expanded, batches, progress=False)
    copy_idx = plan.inserted[0].layer_idx
    assert result.layer_masking[copy_idx] == 0.0
    # Only the tensors that silence the copy get a gradient: on pre-norm models the output
    # projections (whose weights are 0, so |w * g| = 0 too), on post-norm models the norm gains
    # set to their zero (-1 for Gemma), whose own |w * g| is not 0.
    spec = get_architecture(model_type)
    silencers = {f"{norm}.weight" for _, norm, _ in spec.post_norms}
    for name, value in zip(result.unit_names, result.unit_grad_weight[copy_idx]):
        assert (value > 0) if name in silencers else (value == 0.0), name
    if not silencers:
        assert result.layer_scores("grad_weight")[copy_idx] == 0.0
    others = [s for i, s in enumerate(result.layer_scores("grad_weight")) if i != copy_idx]
    assert min(others) > 0


def test_layer_made_to_matter_ranks_first(batches):
    """Only layer 2 learns the probe text; the others are near-identities. Layer 2 must rank first."""
    from adept.importance import batch_loss_sum

    model = tiny_model("llama")
    with torch.no_grad():
        for idx in (0, 1, 3):
            layer = model.model.layers[idx]
            for module in (layer.self_attn.o_proj, layer.mlp.down_proj):
                module.weight.mul_(0.01)
                module.bias.mul_(0.01)
    trained = list(model.model.layers[2].parameters())
    for p in model.parameters():
        p.requires_grad_(any(p is q for q in trained))
    optimizer = torch.optim.Adam(trained, lr=3e-2)
    for _ in range(40):
        for batch in batches:
            optimizer.zero_grad()
            (batch_loss_sum(model, batch) / int((batch["labels"][:, 1:] != -100).sum())).backward()
            optimizer.step()
    result = compute_importance(model, batches, progress=False)
    assert result.ranking("masking")[0] == 2
    assert result.layer_masking[2] > 10 * max(abs(result.layer_masking[i]) for i in (0, 1, 3))
    assert result.ranking("grad_weight")[0] == 2


def test_padding_does_not_change_scores(probe_file, tokenizer):
    model = tiny_model("qwen2")
    examples = tokenize_documents(load_documents(probe_file), tokenizer, max_length=48, seed=0)
    plain = [collate(examples[i : i + 2], tokenizer.pad_token_id) for i in range(0, len(examples), 2)]
    padded = [collate(examples[i : i + 2], tokenizer.pad_token_id, pad_to=80) for i in range(0, len(examples), 2)]
    assert plain[0]["input_ids"].shape[1] < 80
    a = compute_importance(model, plain, progress=False)
    b = compute_importance(model, padded, progress=False)
    assert a.num_tokens == b.num_tokens
    for metric in ("masking", "grad_weight", "fisher"):
        assert a.layer_scores(metric) == pytest.approx(b.layer_scores(metric), rel=1e-4, abs=1e-7)
    assert torch.allclose(torch.tensor(a.unit_grad_weight), torch.tensor(b.unit_grad_weight), rtol=1e-4, atol=1e-8)


def test_gradient_scores_match_a_direct_computation(batches):
    """|w * g| summed with token weights equals a plain per-batch autograd computation; the
    Fisher equals per-sequence squared gradients, which squaring the batch gradient would not give."""
    model = tiny_model("llama")
    params = list(model.model.layers[1].parameters())
    plain, no_fisher, _, _ = unit_gradient_scores(model, batches, params, progress=False)
    assert no_fisher is None
    # No autograd graph on the scores: one would keep every batch's gradients alive (about 1 GB a
    # batch on SmolLM2-135M, so the default 20,000-token probe ran out of 24 GB).
    assert plain.grad_fn is None and not plain.requires_grad
    grad_weight, fisher, _, tokens = unit_gradient_scores(model, batches, params, progress=False, fisher=True)
    expected_gw = torch.zeros(len(params), dtype=torch.float64)
    expected_fi = torch.zeros(len(params), dtype=torch.float64)
    batch_squared = torch.zeros(len(params), dtype=torch.float64)
    from adept.importance import batch_loss_sum

    for batch in batches:
        n = int((batch["labels"][:, 1:] != -100).sum())
        loss = batch_loss_sum(model, batch) / n
        grads = torch.autograd.grad(loss, params)
        for i, (p, g) in enumerate(zip(params, grads)):
            expected_gw[i] += n / tokens * (p * g).abs().sum().double()
            batch_squared[i] += n / tokens * g.pow(2).sum().double()
        for row in range(batch["input_ids"].shape[0]):
            one = {key: value[row : row + 1] for key, value in batch.items()}
            n_row = int((one["labels"][:, 1:] != -100).sum())
            grads = torch.autograd.grad(batch_loss_sum(model, one) / n_row, params)
            for i, g in enumerate(grads):
                expected_fi[i] += n_row / tokens * g.pow(2).sum().double()
    assert torch.allclose(plain.double(), expected_gw, rtol=1e-5)
    assert torch.allclose(grad_weight.double(), expected_gw, rtol=1e-4)
    assert torch.allclose(fisher.double(), expected_fi, rtol=1e-5)
    assert not torch.allclose(fisher.double(), batch_squared, rtol=1e-2)
    assert all(p.grad is None for p in model.parameters())


def test_probe_leaves_model_state_untouched(batches):
    model = tiny_model("llama").train()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    flags["model.layers.0.mlp.up_proj.weight"] = False
    marker = torch.ones_like(model.lm_head.weight)
    model.lm_head.weight.grad = marker
    rng = torch.get_rng_state()
    compute_importance(model, batches, progress=False)
    assert model.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert model.lm_head.weight.grad is marker
    assert torch.equal(torch.get_rng_state(), rng)


def test_bypass_is_a_skip_and_is_restored(batches):
    model = tiny_model("gemma3_text")
    layer = model.model.layers[1]
    base = mean_loss(model, batches)
    with bypass_layer(model, 1):
        skipped = mean_loss(model, batches)
    assert model.model.layers[1] is layer
    assert mean_loss(model, batches) == base
    assert skipped != base


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_masking_replays_the_layers_below_with_the_same_result(model_type, batches):
    """Replaying the unmasked pass's outputs below the skipped layer changes nothing: the scores
    equal one whole-model pass per skipped layer, and the model comes back unchanged."""
    model = tiny_model(model_type)
    layers = list(model.model.layers)
    base = mean_loss(model, batches)
    expected = []
    for index in (0, 2, 3):
        with bypass_layer(model, index):
            expected.append(mean_loss(model, batches) - base)
    got_base, got = layer_masking_scores(model, batches, [0, 2, 3], progress=False)
    assert got_base == base
    assert got == expected
    assert list(model.model.layers) == layers
    assert all(score != 0 for score in got)


def test_rank_aggregation():
    scores = [[1.0, 9.0], [2.0, 8.0], [3.0, math.nan]]
    # unit 0 ranks layers 0<1<2 -> 0, .5, 1; unit 1 ranks 1<0 -> layer1 0, layer0 1.
    assert rank_aggregate(scores) == [pytest.approx(0.5), pytest.approx(0.25), pytest.approx(1.0)]


def test_result_round_trip_and_bad_metrics(batches):
    model = tiny_model("olmo2")
    result = compute_importance(model, batches, metrics=("grad_weight",), progress=False)
    again = ImportanceResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.ranking("grad_weight") == result.ranking("grad_weight")
    with pytest.raises(ValueError, match="masking scores were not computed"):
        result.layer_scores("masking")
    with pytest.raises(ValueError, match="unknown importance metrics"):
        compute_importance(model, batches, metrics=("bogus",), progress=False)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_architecture_is_scored(batches, model_type):
    result = compute_importance(tiny_model(model_type), batches, progress=False)
    assert len(result.layer_masking) == 4
    assert all(s > 0 for s in result.layer_scores("grad_weight"))
