"""Selective expansion preserves the function exactly, for every supported architecture."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ARCHITECTURES, save_tiny_checkpoint, tiny_config, tiny_model
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from adept.architectures import get_architecture
from adept.expansion import (
    expand_checkpoint,
    expand_config,
    expand_model,
    load_manifest,
    plan_expansion,
    select_least_important,
    select_uniform,
    select_within_budget,
)

SOURCE_LAYERS = [0, 2]


def _inputs(seed: int = 1, batch: int = 2, length: int = 16):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, length), generator=generator)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_expanded_checkpoint_computes_the_same_function(tmp_path, model_type):
    original = save_tiny_checkpoint(tmp_path / "base", model_type)
    plan = plan_expansion(4, SOURCE_LAYERS)
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan)
    expanded = AutoModelForCausalLM.from_pretrained(tmp_path / "expanded", attn_implementation="eager").eval()

    assert expanded.config.num_hidden_layers == 6
    assert len(expanded.model.layers) == 6
    assert [layer.self_attn.layer_idx for layer in expanded.model.layers] == list(range(6))
    ids = _inputs()
    with torch.no_grad():
        reference = original(ids).logits
        result = expanded(ids).logits
    assert (reference - result).abs().max().item() == 0.0

    # Greedy decoding with the KV cache follows the original token for token, and the
    # expanded model without the cache agrees with itself with it.
    prompt = ids[:1, :6]
    kwargs = dict(max_new_tokens=8, do_sample=False, pad_token_id=258)
    with torch.no_grad():
        want = original.generate(prompt, use_cache=True, **kwargs)
        got_cached = expanded.generate(prompt, use_cache=True, **kwargs)
        got_uncached = expanded.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(want, got_cached)
    assert torch.equal(got_cached, got_uncached)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_config_per_layer_fields_follow_the_new_order(model_type):
    config = tiny_config(model_type)
    plan = plan_expansion(4, SOURCE_LAYERS)
    new_config = expand_config(config, plan)
    assert new_config.num_hidden_layers == 6
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        origin = [0, 0, 1, 2, 2, 3]
        assert new_config.layer_types == [layer_types[i] for i in origin]
    # The expanded config builds a model whose per-layer settings agree with the list.
    from transformers import AutoModelForCausalLM as Auto

    Auto.from_config(new_config)


def test_qwen_window_threshold_keeps_selecting_the_same_layers():
    config = tiny_config("qwen2")  # max_window_layers=2: layers 2, 3 use sliding windows
    assert config.layer_types == ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
    new_config = expand_config(config, plan_expansion(4, [0, 2]))
    # New order: 0, 0', 1, 2, 2', 3 -> the first sliding layer (old 2) is now index 3.
    assert new_config.max_window_layers == 3
    assert new_config.layer_types == ["full_attention"] * 3 + ["sliding_attention"] * 3


def test_in_memory_expansion_matches_and_copies_are_identities():
    model = tiny_model("llama")
    plan = plan_expansion(4, [1, 3])
    expanded = expand_model(model, plan).eval()
    ids = _inputs()
    with torch.no_grad():
        assert (model(ids).logits - expanded(ids).logits).abs().max().item() == 0.0
    for layer in plan.inserted:
        copy = expanded.model.layers[layer.layer_idx]
        source = model.model.layers[layer.source_layer_idx]
        assert torch.count_nonzero(copy.self_attn.o_proj.weight) == 0
        assert torch.count_nonzero(copy.self_attn.o_proj.bias) == 0
        assert torch.count_nonzero(copy.mlp.down_proj.bias) == 0
        assert torch.equal(copy.self_attn.q_proj.weight, source.self_attn.q_proj.weight)
        assert torch.equal(copy.mlp.up_proj.bias, source.mlp.up_proj.bias)


def test_perturbing_a_zeroed_tensor_changes_the_output(tmp_path):
    original = save_tiny_checkpoint(tmp_path / "base", "llama")
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan_expansion(4, [1]))
    expanded = AutoModelForCausalLM.from_pretrained(tmp_path / "expanded", attn_implementation="eager").eval()
    ids = _inputs()
    with torch.no_grad():
        expanded.model.layers[2].mlp.down_proj.bias.add_(0.05)
        assert (original(ids).logits - expanded(ids).logits).abs().max().item() > 1e-3


def test_sharded_checkpoint_round_trip_keeps_sharding_and_manifest(tmp_path):
    original = save_tiny_checkpoint(tmp_path / "base", "qwen3", max_shard_size="40KB")
    index = json.loads((tmp_path / "base" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    plan = plan_expansion(4, [1, 3])
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan)
    out = tmp_path / "expanded"
    new_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(new_index["weight_map"].values())) == shards
    # Every tensor sits in the shard the index says, and total_size is the real byte count.
    total = 0
    for shard in shards:
        with safe_open(out / shard, "pt") as handle:
            for key in handle.keys():
                assert new_index["weight_map"][key] == shard
                tensor = handle.get_tensor(key)
                total += tensor.numel() * tensor.element_size()
    assert new_index["metadata"]["total_size"] == total
    assert (out / "tokenizer.json").is_file()

    manifest = load_manifest(out)
    assert manifest["source_num_layers"] == 4 and manifest["num_hidden_layers"] == 6
    assert manifest["inserted_layers"] == [
        {"layer_idx": 2, "source_layer_idx": 1},
        {"layer_idx": 5, "source_layer_idx": 3},
    ]
    assert manifest["layer_map"] == {"0": 0, "1": 1, "2": 3, "3": 4}
    assert manifest["initialized_tensors"] == {
        f"model.layers.{i}.{name}.weight": 0.0 for i in (2, 5) for name in ("self_attn.o_proj", "mlp.down_proj")
    }
    expanded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    ids = _inputs()
    with torch.no_grad():
        assert (original(ids).logits - expanded(ids).logits).abs().max().item() == 0.0
    # An expanded checkpoint saved again by transformers loads back unchanged.
    expanded.save_pretrained(tmp_path / "resaved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "resaved", attn_implementation="eager").eval()
    with torch.no_grad():
        assert (again(ids).logits - expanded(ids).logits).abs().max().item() == 0.0


def test_tied_embeddings_stay_tied(tmp_path):
    save_tiny_checkpoint(tmp_path / "base", "gemma2")
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan_expansion(4, [0]))
    expanded = AutoModelForCausalLM.from_pretrained(tmp_path / "expanded")
    assert expanded.config.tie_word_embeddings
    assert expanded.lm_head.weight.data_ptr() == expanded.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ([1, 1], "duplicate layer ids"),
        ([4], "out of range"),
        ([-1], "out of range"),
        ([0, 1, 2, 3], "choose fewer than 4"),
        ([], "at least one"),
    ],
)
def test_bad_layer_choices_are_rejected(layers, message):
    with pytest.raises(ValueError, match=message):
        plan_expansion(4, layers)


def test_plan_layer_map():
    plan = plan_expansion(5, [3, 0])
    assert plan.source_layers == (0, 3)
    assert plan.layer_map == (0, 2, 3, 4, 6)
    assert plan.inserted_layer_indices == [1, 5]
    assert plan.new_layer_origin() == [(0, False), (0, True), (1, False), (2, False), (3, False), (3, True), (4, False)]


def test_selection_by_score_and_budget():
    scores = [0.5, 0.1, 0.9, 0.1, 0.3]
    assert select_least_important(scores, 2) == [1, 3]
    assert select_least_important(scores, 3) == [1, 3, 4]
    with pytest.raises(ValueError, match="between 1 and 4"):
        select_least_important(scores, 5)
    per_layer = [100] * 5
    # 2 copies: 200 / (600 + 200) = 0.25 fits 0.26; a third would be 300 / 900 = 0.33.
    assert select_within_budget(scores, per_layer, 600, 0.26) == [1, 3]
    with pytest.raises(ValueError, match="too small"):
        select_within_budget(scores, per_layer, 600, 0.05)


def test_uniform_selection_spreads_copies_like_llama_pro():
    assert select_uniform(8, 2) == [3, 7]
    assert select_uniform(8, 4) == [1, 3, 5, 7]
    assert select_uniform(10, 3) == [2, 5, 9]
    assert select_uniform(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="--uniform must be between 1 and 8"):
        select_uniform(8, 0)


def test_refuses_non_empty_output_and_keeps_finished_output_on_failure(tmp_path, monkeypatch):
    save_tiny_checkpoint(tmp_path / "base", "llama", max_shard_size="40KB")
    out = tmp_path / "expanded"
    plan = plan_expansion(4, [1])
    expand_checkpoint(tmp_path / "base", out, plan)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="not empty"):
        expand_checkpoint(tmp_path / "base", out, plan)

    import adept.expanded_checkpoint as expansion

    calls = {"n": 0}
    real = expansion._write_expanded_shard

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("interrupted")
        return real(*args, **kwargs)

    monkeypatch.setattr(expansion, "_write_expanded_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        expand_checkpoint(tmp_path / "base", out, plan_expansion(4, [2]), overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "expanded"]  # no temporary left behind
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        expand_checkpoint(tmp_path / "base", tmp_path / "fresh", plan)
    assert not (tmp_path / "fresh").exists()


def test_overwrite_replaces_output(tmp_path):
    save_tiny_checkpoint(tmp_path / "base", "llama")
    out = tmp_path / "expanded"
    expand_checkpoint(tmp_path / "base", out, plan_expansion(4, [1]))
    expand_checkpoint(tmp_path / "base", out, plan_expansion(4, [1, 2]), overwrite=True)
    assert load_manifest(out)["num_hidden_layers"] == 6


def test_missing_files_and_unsupported_architectures(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        expand_checkpoint(tmp_path / "nowhere", tmp_path / "out", plan_expansion(4, [1]))
    save_tiny_checkpoint(tmp_path / "base", "llama")
    (tmp_path / "base" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        expand_checkpoint(tmp_path / "base", tmp_path / "out", plan_expansion(4, [1]))
    with pytest.raises(ValueError, match="supported model types: gemma2, gemma3_text, llama"):
        get_architecture("gpt2")


def test_state_dict_missing_output_projection_is_refused():
    from adept.expansion import plan_tensor_copies

    spec = get_architecture("llama")
    keys = [f"model.layers.{i}.self_attn.o_proj.weight" for i in range(2)] + ["model.layers.0.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="lacks .*output projections and the norms after them"):
        plan_tensor_copies(keys, plan_expansion(2, [1]), spec)
    keys = [f"model.layers.{i}.{name}.weight" for i in range(2) for name in ("self_attn.o_proj", "mlp.down_proj")]
    copies = plan_tensor_copies(keys, plan_expansion(2, [1]), spec)
    assert [c.target_key for c in copies if c.fill == 0.0] == [
        "model.layers.2.self_attn.o_proj.weight",
        "model.layers.2.mlp.down_proj.weight",
    ]


def test_expanded_checkpoint_has_its_own_card_and_not_the_sources_files(tmp_path):
    """The source folder's model card and measurements describe other weights: they stay behind,
    the tokenizer comes along, and a card says where the copies came from."""
    save_tiny_checkpoint(tmp_path / "base", "llama")
    (tmp_path / "base" / "README.md").write_text("# The base model\nTrained on Austen.\n")
    (tmp_path / "base" / "measurements.json").write_text('{"general_loss": 4.7}\n')
    (tmp_path / "base" / "training_summary.json").write_text('{"method": "full"}\n')
    selection = {
        "method": "importance",
        "importance": "runs/x/importance.json",
        "metric": "masking",
        "num_new_layers": 2,
    }
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan_expansion(4, [1, 3]), selection=selection)
    names = {path.name for path in (tmp_path / "expanded").iterdir()}
    assert not {"measurements.json", "training_summary.json"} & names
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "expansion.json", "README.md"} <= names
    card = (tmp_path / "expanded" / "README.md").read_text()
    assert "Austen" not in card
    assert "| 2 | 1 |" in card and "| 5 | 3 |" in card
    assert "least important for general competence by `masking` in `runs/x/importance.json`" in card
    assert "`mlp.down_proj`, `self_attn.o_proj` were set to\n0.0" in card


@pytest.mark.parametrize("model_type, gain", [("gemma2", -1.0), ("gemma3_text", -1.0), ("olmo2", 0.0)])
def test_post_norm_copies_zero_the_norm_gain_and_keep_the_projections(tmp_path, model_type, gain):
    """Where a norm follows o_proj / down_proj, the copy's zero is that norm's gain; the
    projections are copied (zeroing both would leave the copy without a gradient)."""
    original = save_tiny_checkpoint(tmp_path / "base", model_type)
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan_expansion(4, [1]))
    manifest = load_manifest(tmp_path / "expanded")
    assert manifest["initialized_tensors"] == {
        "model.layers.2.post_attention_layernorm.weight": gain,
        "model.layers.2.post_feedforward_layernorm.weight": gain,
    }
    expanded = AutoModelForCausalLM.from_pretrained(tmp_path / "expanded", attn_implementation="eager").eval()
    copy, source = expanded.model.layers[2], original.model.layers[1]
    assert torch.equal(copy.self_attn.o_proj.weight, source.self_attn.o_proj.weight)
    assert torch.equal(copy.mlp.down_proj.weight, source.mlp.down_proj.weight)
    assert torch.all(copy.post_attention_layernorm.weight == gain)
    ids = _inputs()
    with torch.no_grad():
        assert (original(ids).logits - expanded(ids).logits).abs().max().item() == 0.0
        copy.post_feedforward_layernorm.weight.add_(0.05)  # a perturbed gain makes the copy act
        assert (original(ids).logits - expanded(ids).logits).abs().max().item() > 1e-3


def test_set_tensors_keep_their_dtype_when_streamed(tmp_path):
    """A bf16 Gemma checkpoint: the copies' norm gains are written as bf16 -1.0, byte for byte."""
    model = save_tiny_checkpoint(tmp_path / "fp32", "gemma2")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    expand_checkpoint(tmp_path / "bf16", tmp_path / "expanded", plan_expansion(4, [0]))
    with safe_open(tmp_path / "expanded" / "model.safetensors", "pt") as handle:
        gain = handle.get_tensor("model.layers.1.post_attention_layernorm.weight")
        source = handle.get_tensor("model.layers.0.post_attention_layernorm.weight")
    assert gain.dtype == source.dtype == torch.bfloat16
    assert torch.equal(gain, torch.full_like(source, -1.0))
