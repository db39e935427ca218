"""`adept.memory` against real models.

Parameter counts, optimizer state, saved activations; the GPU recipe and check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from transformers import CONFIG_MAPPING, AutoModelForCausalLM

from adept.config import load_config
from adept.expansion import expand_model, plan_expansion
from adept.memory import (
    GIB,
    count_parameters,
    decoder_layer_shapes,
    docs_tables,
    estimate_training_memory,
    reference_configs,
    saved_activation_bytes,
    training_flops_per_token,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "gpu" / "qwen3-1.7b.yaml"
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402

# Activation shapes: no parameter dimension equals the batch (3) or batch x sequence (120), so a
# saved tensor whose first dimension is one of them is an activation.
BATCH, SEQ = 3, 40


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run 10x faster on one thread than on two contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _numel_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _shaped_config(model_type: str, num_hidden_layers: int = 3):
    """Llama/Qwen2/Qwen3 with hidden 128, intermediate 384, 4 heads of 32, 2 key-value heads, vocab 512."""
    extra = {"qwen3": {"head_dim": 32}, "llama": {"attention_bias": True, "mlp_bias": True}}.get(model_type, {})
    return CONFIG_MAPPING[model_type](
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        **extra,
    )


def _training_model(config, method: str, dtype: torch.dtype, source_layers=(1, 2)):
    """Full CPT (every weight fp32) or copies of ``source_layers`` (fp32, the rest frozen in ``dtype``).

    Returns the model and the index of its lowest trainable layer.
    """
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if method == "full":
        return model.float().train(), 0
    plan = plan_expansion(config.num_hidden_layers, list(source_layers))
    model = expand_model(model, plan).to(dtype)
    copies = tuple(f"model.layers.{idx}." for idx in plan.inserted_layer_indices)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(copies))
        if param.requires_grad:
            param.data = param.data.float()
    return model.train(), min(plan.inserted_layer_indices)


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("tied", [False, True])
def test_parameter_count_matches_a_tiny_model(model_type, tied):
    config = tiny_config(model_type)
    config.tie_word_embeddings = tied
    model = AutoModelForCausalLM.from_config(config)
    assert count_parameters(config).total == sum(p.numel() for p in model.parameters())
    layer = {name: tuple(p.shape) for name, p in model.model.layers[0].named_parameters()}
    assert decoder_layer_shapes(config) == layer


def test_parameter_count_matches_real_shapes_on_the_meta_device():
    """Qwen2.5-0.5B, Qwen3-1.7B and Llama-3.1-8B built without memory: the counts are exact."""
    for name, config in reference_configs().items():
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        assert count_parameters(config).total == sum(p.numel() for p in model.parameters()), name
    assert count_parameters(reference_configs()["Qwen2.5-0.5B"]).total == 494_032_768  # the published 0.49B


def test_parameter_count_of_an_expanded_model():
    config = tiny_config("qwen3")
    expanded = expand_model(AutoModelForCausalLM.from_config(config), plan_expansion(4, [0, 3]))
    assert count_parameters(config, num_new_layers=2).total == sum(p.numel() for p in expanded.parameters())


# --- weights, gradients, optimizer state -----------------------------------------------------------


@pytest.mark.parametrize(
    "method, model_type", [("full", "llama"), ("full", "qwen2"), ("adept", "qwen3"), ("adept", "llama")]
)
def test_state_bytes_match_one_adamw_step(method, model_type):
    """Weights, gradients and AdamW's two moments of a real step equal the estimate, byte for byte."""
    config = tiny_config(model_type)
    config.tie_word_embeddings = model_type == "qwen2"
    config._attn_implementation = "sdpa"
    model, lowest = _training_model(config, method, torch.bfloat16, source_layers=(1, 3))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    ids = torch.randint(0, config.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()

    estimate = estimate_training_memory(
        config,
        method=method,
        trainable_layers=2,
        lowest_trainable_layer=lowest,
        micro_batch_size=2,
        block_size=16,
        gradient_checkpointing=False,
    )
    moments = [value for state in optimizer.state.values() for key, value in state.items() if key != "step"]
    assert _numel_bytes(model.parameters()) == estimate.weights
    assert _numel_bytes(p.grad for p in model.parameters() if p.grad is not None) == estimate.gradients
    assert _numel_bytes(moments) == estimate.optimizer_states
    assert estimate.master_weights == 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert estimate.trainable_parameters == trainable and estimate.parameters == sum(
        p.numel() for p in model.parameters()
    )


# --- activations ---------------------------------------------------------------------------------


def _saved_bytes(model, dtype: torch.dtype, checkpointing: bool) -> tuple[int, int]:
    """Bytes of activations and of bf16 weight copies that autograd saves in one forward."""
    if checkpointing:
        model.activation_checkpointing_enable()
    weight_shapes = {tuple(p.shape) for p in model.parameters() if p.requires_grad}
    weight_shapes |= {shape[::-1] for shape in weight_shapes}
    activations, copies = {}, {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if tensor.dim() and tensor.shape[0] in (BATCH, BATCH * SEQ):
            activations[storage.data_ptr()] = storage.nbytes()
        elif tensor.dtype == torch.bfloat16 and tuple(tensor.shape) in weight_shapes:
            copies[storage.data_ptr()] = storage.nbytes()
        return tensor

    ids = torch.randint(0, 512, (BATCH, SEQ))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != torch.float32):
            model(input_ids=ids, labels=ids, use_cache=False)
    return sum(activations.values()), sum(copies.values())


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("method", ["full", "adept"])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_saved_activations_match_autograd(model_type, method, checkpointing):
    """The per-layer formula equals what autograd saves under bf16 autocast with SDPA (1% for label indices)."""
    config = _shaped_config(model_type)
    model, lowest = _training_model(config, method, torch.bfloat16)
    measured, copies = _saved_bytes(model, torch.bfloat16, checkpointing)
    kwargs = dict(
        method=method,
        trainable_layers=2,
        lowest_trainable_layer=lowest,
        micro_batch_size=BATCH,
        block_size=SEQ,
        gradient_checkpointing=checkpointing,
    )
    assert saved_activation_bytes(config, **kwargs) == pytest.approx(measured, rel=0.01)
    if method == "full" and not checkpointing:  # every projection's input needs a gradient: every cast is saved
        assert estimate_training_memory(config, **kwargs).autocast_copies == copies


@pytest.mark.parametrize("method", ["full", "adept"])
def test_saved_activations_in_float32(method):
    config = _shaped_config("llama")
    model, lowest = _training_model(config, method, torch.float32)
    measured, _ = _saved_bytes(model, torch.float32, False)
    predicted = saved_activation_bytes(
        config,
        method=method,
        trainable_layers=2,
        lowest_trainable_layer=lowest,
        dtype="float32",
        micro_batch_size=BATCH,
        block_size=SEQ,
    )
    assert predicted == pytest.approx(measured, rel=0.01)


def test_activations_grow_with_tokens_and_checkpointing_shrinks_them():
    config = reference_configs()["Qwen3-1.7B"]
    for method in ("adept", "full"):

        def total(mb, block, gc, method=method):
            return estimate_training_memory(
                config,
                method=method,
                trainable_layers=4,
                micro_batch_size=mb,
                block_size=block,
                gradient_checkpointing=gc,
            )

        assert total(1, 2048, False).activations < total(1, 4096, False).activations < total(2, 4096, False).activations
        assert total(1, 4096, True).activations < total(1, 4096, False).activations
        assert total(1, 4096, True).logits == total(1, 4096, False).logits
    adept, full = (
        estimate_training_memory(
            config, method=m, trainable_layers=4, micro_batch_size=1, block_size=4096, gradient_checkpointing=False
        )
        for m in ("adept", "full")
    )
    assert adept.total < full.total and adept.activations < full.activations
    # Copies placed higher up leave more frozen layers below them, which save nothing.
    high = estimate_training_memory(
        config,
        method="adept",
        trainable_layers=4,
        lowest_trainable_layer=20,
        micro_batch_size=1,
        block_size=4096,
        gradient_checkpointing=False,
    )
    assert high.activations < adept.activations


# --- sharding ------------------------------------------------------------------------------------


def test_sharding_divides_what_it_shards():
    config = reference_configs()["Qwen3-1.7B"]
    counts = count_parameters(config)

    def estimate(method, world, sharding):
        return estimate_training_memory(
            config,
            method=method,
            trainable_layers=4,
            micro_batch_size=1,
            block_size=2048,
            gradient_checkpointing=True,
            world_size=world,
            sharding=sharding,
        )

    for method in ("adept", "full"):
        single, ddp = estimate(method, 1, "none"), estimate(method, 8, "none")
        assert ddp.gradients == 2 * single.gradients  # DDP's buckets
        assert (ddp.weights, ddp.optimizer_states) == (single.weights, single.optimizer_states)
        one, eight = estimate(method, 1, "zero2"), estimate(method, 8, "zero2")
        assert eight.weights == one.weights == 2 * one.parameters  # DeepSpeed holds bf16 parameters
        assert (
            one.master_weights == 4 * one.trainable_parameters and one.optimizer_states == 8 * one.trainable_parameters
        )
        for name in ("gradients", "optimizer_states", "master_weights"):
            assert getattr(eight, name) == getattr(one, name) // 8
        layers = counts.num_hidden_layers + (4 if method == "adept" else 0)
        for sharding in ("fsdp2", "zero3"):
            one, eight = estimate(method, 1, sharding), estimate(method, 8, sharding)
            in_flight = 2 * (2 * counts.per_layer + counts.embedding + counts.lm_head)
            assert eight.weights - in_flight == (one.weights - in_flight) // 8
            assert eight.optimizer_states == one.optimizer_states // 8 and eight.gradients == one.gradients // 8
            assert eight.activations == one.activations and eight.autocast_copies == 0
        assert one.parameters == counts.total + (layers - counts.num_hidden_layers) * counts.per_layer


def test_estimate_rejects_what_it_does_not_model():
    config = reference_configs()["Qwen3-1.7B"]
    with pytest.raises(ValueError, match="needs trainable_layers"):
        estimate_training_memory(config, method="adept", micro_batch_size=1, block_size=8, gradient_checkpointing=False)
    with pytest.raises(ValueError, match="sharding must be one of"):
        estimate_training_memory(
            config, method="full", micro_batch_size=1, block_size=8, gradient_checkpointing=False, sharding="zero1"
        )
    with pytest.raises(ValueError, match="method must be"):
        estimate_training_memory(config, method="lora", micro_batch_size=1, block_size=8, gradient_checkpointing=False)
    with pytest.raises(ValueError, match="not 'gemma2'"):
        count_parameters(tiny_config("gemma2"))


# --- FLOPs ---------------------------------------------------------------------------------------


def test_training_flops_per_token():
    config = _shaped_config("qwen3")
    model = AutoModelForCausalLM.from_config(config)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    block, q_dim, layers = 64, 4 * 32, config.num_hidden_layers
    full = training_flops_per_token(config, method="full", block_size=block)
    assert full == 6 * matmul + 3 * layers * 2 * q_dim * block  # 6N plus causal attention, backward twice forward
    # Training every existing layer from layer 0 but not the output matrix: full CPT less lm_head's weight gradient.
    every_layer = training_flops_per_token(config, method="freeze", trainable_layers=layers, block_size=block)
    assert every_layer == full - 2 * config.vocab_size * config.hidden_size
    # One copy on top of 3 layers (index 3 of 4): forward through all 4, backward through the copy only.
    head = 2 * config.vocab_size * config.hidden_size
    layer, attention = (2 * matmul - head) // layers, 2 * q_dim * block
    top = training_flops_per_token(
        config, method="adept", trainable_layers=1, lowest_trainable_layer=3, block_size=block
    )
    assert top == 4 * (layer + attention) + head + (layer + 2 * attention) + head + layer
    low = training_flops_per_token(
        config, method="adept", trainable_layers=1, lowest_trainable_layer=1, block_size=block
    )
    assert low == top + 2 * (layer + 2 * attention)
    assert training_flops_per_token(config, method="adept", trainable_layers=1, block_size=block) == low  # the default


# --- the GPU check, the recipe and the doc -------------------------------------------------------


def test_gpu_check_runs_tiny_on_cpu(capsys):
    rows = gpu_check.main(["--device", "cpu", "--tiny"])
    assert [(r["model"], r["method"]) for r in rows] == [
        ("tiny-qwen2", "adept"),
        ("tiny-qwen2", "full"),
        ("tiny-qwen3", "adept"),
        ("tiny-qwen3", "full"),
    ]
    assert all(r["tokens_per_s"] > 0 and r["estimate_bytes"] > 0 and r["peak_bytes"] is None for r in rows)
    assert rows[0]["flops_per_token"] < rows[1]["flops_per_token"]
    out = capsys.readouterr().out
    assert "| tiny-qwen3 | 32 | adept |" in out and "ADEPT/full tokens/s" in out and "micro-batch 1" in out


def test_gpu_check_needs_cuda_unless_told_otherwise():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(SystemExit, match="CUDA is not available"):
        gpu_check.main([])
    assert gpu_check.peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert gpu_check.peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert gpu_check.peak_flops("Some GPU", 100) == 100e12 and gpu_check.peak_flops("Some GPU", None) is None


def test_gpu_recipe_loads():
    config = load_config(RECIPE, ["model=/models/Qwen3-1.7B-Base"])
    assert (config.dtype, config.attn_implementation, config.data.block_size) == ("bfloat16", "sdpa", 4096)
    assert config.train.max_tokens >= 1e8
    args = config.method_settings("adept").training_args
    assert args["bf16"] is True and args["report_to"] == "tensorboard"
    assert args["fsdp"] is True and args["fsdp_config"]["version"] == 2
    assert args["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["Qwen3DecoderLayer"]
    assert args["fsdp_config"]["activation_checkpointing"] is True
    # The DeepSpeed alternative named in the recipe's header loads too.
    zero2 = ROOT / "configs" / "gpu" / "zero2.json"
    assert json.loads(zero2.read_text())["zero_optimization"]["stage"] == 2
    deepspeed = load_config(
        RECIPE,
        [
            "model=x",
            "train.training_args.fsdp=",
            "train.training_args.fsdp_config=",
            f"train.training_args.deepspeed={zero2}",
            "train.training_args.gradient_checkpointing=true",
        ],
    )
    assert deepspeed.method_settings("adept").training_args["deepspeed"] == str(zero2)


def test_docs_hold_the_generated_tables():
    """docs/gpu.md quotes `python -m adept.memory` verbatim (rerun it after changing the formula)."""
    text = (ROOT / "docs" / "gpu.md").read_text()
    assert docs_tables() in text
    adept, full = (
        estimate_training_memory(
            reference_configs()["Qwen3-1.7B"],
            method=m,
            trainable_layers=4,
            micro_batch_size=2,
            block_size=4096,
            gradient_checkpointing=True,
            world_size=8,
            sharding="fsdp2",
        )
        for m in ("adept", "full")
    )
    assert f"{adept.total / GIB:.1f} GiB" in text and f"{full.total / GIB:.1f} GiB" in text
