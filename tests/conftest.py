"""Tiny random models of every supported architecture, built in code.

The byte-level tokenizer is `adept.data.byte_tokenizer`.
"""

from __future__ import annotations

import pytest
import torch

from adept.data import byte_tokenizer  # noqa: F401  (tests import it from here)

ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "olmo2")
VOCAB = 259  # 256 bytes + <s>, </s>, <pad>


def tiny_config(model_type: str, num_hidden_layers: int = 4):
    """A 4-layer, hidden-32 config; sliding windows are short so per-layer types matter."""
    from transformers import CONFIG_MAPPING

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
    )
    extra = {
        "llama": dict(attention_bias=True, mlp_bias=True),  # biases on the output projections too
        "mistral": dict(sliding_window=6),
        "qwen2": dict(use_sliding_window=True, sliding_window=6, max_window_layers=2),
        "qwen3": dict(use_sliding_window=True, sliding_window=6, max_window_layers=2, head_dim=8),
        "gemma2": dict(head_dim=8, sliding_window=6, query_pre_attn_scalar=8),
        "gemma3_text": dict(head_dim=8, sliding_window=6, query_pre_attn_scalar=8, sliding_window_pattern=2),
        "phi3": dict(sliding_window=None),
        "olmo2": dict(),
    }[model_type]
    config = CONFIG_MAPPING[model_type](**common, **extra)
    config._attn_implementation = "eager"
    return config


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Give every parameter, biases and norms included, random values (default init hides bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model


def tiny_model(model_type: str = "llama", num_hidden_layers: int = 4, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, num_hidden_layers), attn_implementation="eager")
    return randomize_(model, seed=seed).eval()


def save_tiny_checkpoint(
    path, model_type: str = "llama", num_hidden_layers: int = 4, seed: int = 0, max_shard_size=None
):
    model = tiny_model(model_type, num_hidden_layers, seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    byte_tokenizer().save_pretrained(path)
    return model


PROBE_TEXT = (
    "The river runs through the old town and past the mill.\n\n"
    "Children walk to school along the bank every morning.\n\n"
    "In winter the water freezes and the boats stay in the harbour.\n\n"
    "Farmers bring apples, bread and cheese to the market on Saturday.\n\n"
    "The library opens at nine and closes when the last reader leaves.\n\n"
    "A storm in the night broke branches from the tall oak by the church.\n"
)


@pytest.fixture
def probe_file(tmp_path):
    path = tmp_path / "probe.txt"
    path.write_text(PROBE_TEXT)
    return path


@pytest.fixture
def tokenizer():
    return byte_tokenizer()
