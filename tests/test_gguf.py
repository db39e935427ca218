"""GGUF in, plain checkpoint out: tiny GGUF files written here with the `gguf` package.

Each file is laid out the way llama.cpp's converter writes it (Llama q/k rows permuted for its
rotary kernel, Gemma norm gains stored as 1 + w, a byte-level BPE vocabulary), so the tests
check transformers' reading of it end to end: the converted checkpoint must compute the logits
of the model the file was written from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import VOCAB, byte_tokenizer, randomize_

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'adept-cpt[test]')")


def _sentencepiece_vocab() -> list[str]:
    """A small Gemma-style vocabulary: specials, 256 byte-fallback tokens, characters, a few words."""
    pieces = [
        "\u2581",
        *"abcdefghijklmnopqrstuvwxyzTC.,;",
        "th",
        "he",
        "\u2581t",
        "\u2581th",
        "\u2581the",
        "er",
        "in",
        "an",
    ]
    return ["<pad>", "<eos>", "<bos>", "<unk>", *(f"<0x{byte:02X}>" for byte in range(256)), *pieces]


def _config(arch: str):
    from transformers import CONFIG_MAPPING

    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    if arch == "llama":  # SmolLM2's shape in small: tied embeddings, no biases, byte-level BPE ids
        config = CONFIG_MAPPING["llama"](
            num_hidden_layers=3,
            rms_norm_eps=1e-5,
            vocab_size=VOCAB,
            bos_token_id=256,
            eos_token_id=257,
            pad_token_id=258,
            **common,
        )
    else:  # Gemma 3: one global layer after five sliding ones, as in the released models; sentencepiece ids
        config = CONFIG_MAPPING["gemma3_text"](
            num_hidden_layers=6,
            head_dim=8,
            sliding_window=6,
            rms_norm_eps=1e-6,
            vocab_size=len(_sentencepiece_vocab()),
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
            **common,
        )
    config._attn_implementation = "eager"
    return config


def _model(arch: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return randomize_(AutoModelForCausalLM.from_config(_config(arch), attn_implementation="eager"), seed=seed).eval()


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (interleaved rotary halves)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_gguf(model, path, arch: str, permute: bool = True) -> None:
    """Write ``model`` and the byte-level vocabulary as an F32 GGUF file, as llama.cpp lays it out.

    ``permute=False`` skips llama.cpp's q/k row order (a wrongly written file).
    """
    config = model.config
    gguf_arch = {"llama": "llama", "gemma3_text": "gemma3"}[config.model_type]
    writer = gguf.GGUFWriter(str(path), gguf_arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if gguf_arch == "llama":
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    else:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)
        writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])

    if gguf_arch == "llama":  # byte-level BPE (SmolLM2's kind of tokenizer), the test vocabulary
        vocab = byte_tokenizer().get_vocab()
        tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([1] * 256 + [3] * 3)  # normal bytes, then <s> </s> <pad> as control tokens
        writer.add_token_scores([0.0] * len(tokens))  # no merges: every byte is one token, as in the source
        writer.add_add_bos_token(False)
    else:  # sentencepiece with byte fallback (Gemma's kind)
        tokens = _sentencepiece_vocab()
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([3, 3, 3, 2] + [6] * 256 + [1] * (len(tokens) - 260))
        writer.add_token_scores([0.0] * 260 + [-float(i) for i in range(len(tokens) - 260)])
        writer.add_unk_token_id(3)
        writer.add_add_bos_token(True)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, gguf_arch.upper()), config.num_hidden_layers)
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        stem, _, suffix = key.rpartition(".")
        name = names.get_name(stem)
        assert name is not None, key
        data = tensor.detach().float().numpy().copy()
        if permute and gguf_arch == "llama" and name.endswith(".attn_q"):
            data = _permute(data, config.num_attention_heads)
        elif permute and gguf_arch == "llama" and name.endswith(".attn_k"):
            data = _permute(data, config.num_key_value_heads)
        if gguf_arch == "gemma3" and name.endswith("norm"):
            data = data + 1.0  # llama.cpp bakes Gemma's (1 + w) scaling into the stored gain
        writer.add_tensor(f"{name}.{suffix}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


TEXT = "The river runs past the mill; children walk along the bank."


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_converted_gguf_matches_source_logits(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adept.checkpoints import convert_gguf, read_conversion

    source = _model(arch)
    gguf_path = tmp_path / f"tiny-{arch}.gguf"
    write_gguf(source, gguf_path, arch)
    out = convert_gguf(gguf_path, tmp_path / "converted")

    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    record = read_conversion(out)
    assert record["source_sha256"] and record["model_type"] == source.config.model_type
    assert record["num_hidden_layers"] == source.config.num_hidden_layers

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    if arch == "llama":
        assert ids[0].tolist() == byte_tokenizer()(TEXT).input_ids  # same tokens as the source vocabulary
    else:
        assert ids[0, 0].item() == source.config.bos_token_id and "\u2581the" in tokenizer.convert_ids_to_tokens(ids[0])
        assert tokenizer.decode(ids[0], skip_special_tokens=True) == TEXT  # byte fallback covers the rest
    assert ids.shape[1] > 6  # longer than Gemma's sliding window here
    with torch.no_grad():
        expected = source(ids).logits
        got = loaded(ids).logits
    assert expected.abs().max() > 0.1
    assert (got - expected).abs().max().item() < 1e-4

    # The comparison can fail: a model one weight away gives different logits.
    with torch.no_grad():
        next(p for n, p in loaded.named_parameters() if "layers.0" in n and "proj" in n).add_(0.5)
        assert (loaded(ids).logits - expected).abs().max().item() > 1e-2


def test_unpermuted_llama_file_is_caught(tmp_path):
    """Without llama.cpp's q/k permutation the logits differ: the round trip tests the layout."""
    from transformers import AutoModelForCausalLM

    from adept.checkpoints import convert_gguf

    source = _model("llama")
    write_gguf(source, tmp_path / "raw.gguf", "llama", permute=False)
    out = convert_gguf(tmp_path / "raw.gguf", tmp_path / "converted")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    ids = torch.tensor([byte_tokenizer()(TEXT).input_ids])
    with torch.no_grad():
        assert (loaded(ids).logits - source(ids).logits).abs().max().item() > 1e-3


def test_resolve_model_path_converts_once_and_caches(tmp_path, monkeypatch):
    import adept.checkpoints as checkpoints

    monkeypatch.setenv("ADEPT_CACHE_DIR", str(tmp_path / "cache"))
    gguf_path = tmp_path / "tiny.gguf"
    write_gguf(_model("llama"), gguf_path, "llama")
    first = checkpoints.resolve_model_path(gguf_path)
    assert first.parent == tmp_path / "cache" / "checkpoints"
    assert first.name.startswith("tiny-") and (first / "config.json").is_file()

    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(checkpoints, "convert_gguf", fail)
    assert checkpoints.resolve_model_path(gguf_path) == first  # cached: no second conversion
    assert checkpoints.resolve_model_path(tmp_path / "some-folder") == tmp_path / "some-folder"

    # A changed file is a new cache entry.
    monkeypatch.undo()
    monkeypatch.setenv("ADEPT_CACHE_DIR", str(tmp_path / "cache"))
    write_gguf(_model("llama", seed=1), gguf_path, "llama")
    second = checkpoints.resolve_model_path(gguf_path)
    assert second != first and (second / "config.json").is_file()


def test_cli_convert_and_errors(tmp_path, capsys):
    from adept.cli import main

    gguf_path = tmp_path / "tiny.gguf"
    write_gguf(_model("gemma3"), gguf_path, "gemma3")
    assert main(["convert", str(gguf_path), "--output", str(tmp_path / "out"), "--dtype", "bfloat16"]) == 0
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["dtype"] == "bfloat16"
    # The folder is not empty now: refused without --overwrite, in one line naming it.
    assert main(["convert", str(gguf_path), "--output", str(tmp_path / "out")]) == 2
    assert "out: directory is not empty" in capsys.readouterr().err

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    assert main(["convert", str(bad), "--output", str(tmp_path / "bad-out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.gguf: not a GGUF file" in err and len(err.strip().splitlines()) == 1


def test_gguf_model_accepted_by_expand_and_eval(tmp_path, monkeypatch):
    """Commands that take --model take a .gguf file and work on its cached conversion."""
    from adept.cli import main

    monkeypatch.setenv("ADEPT_CACHE_DIR", str(tmp_path / "cache"))
    gguf_path = tmp_path / "tiny.gguf"
    write_gguf(_model("llama"), gguf_path, "llama")
    assert main(["expand", "--model", str(gguf_path), "--output", str(tmp_path / "expanded"), "--layers", "1"]) == 0
    manifest = json.loads((tmp_path / "expanded" / "expansion.json").read_text())
    assert [entry["source_layer_idx"] for entry in manifest["inserted_layers"]] == [1]
    held_out = tmp_path / "heldout.txt"
    held_out.write_text(TEXT + "\n\n" + TEXT[::-1] + "\n")
    assert (
        main(
            [
                "eval",
                "--model",
                str(gguf_path),
                "--model",
                str(tmp_path / "expanded"),
                "--general",
                str(held_out),
                "--output",
                str(tmp_path / "eval"),
                "--block-size",
                "16",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    runs = json.loads((tmp_path / "eval" / "results.json").read_text())["runs"]
    assert runs[0]["label"] == "tiny"
    # The expanded copy computes the same function, so the held-out loss is the same.
    assert abs(runs[0]["perplexity"]["heldout"]["loss"] - runs[1]["perplexity"]["heldout"]["loss"]) < 1e-5


def test_pipeline_takes_a_gguf_model(tmp_path, monkeypatch):
    """`model: x.gguf` in a config: the saved config keeps the file, every stage reads its conversion."""
    import yaml
    from conftest import PROBE_TEXT

    from adept.config import load_config
    from adept.pipeline import run_pipeline

    monkeypatch.setenv("ADEPT_CACHE_DIR", str(tmp_path / "cache"))
    gguf_path = tmp_path / "tiny.gguf"
    write_gguf(_model("llama"), gguf_path, "llama")
    (tmp_path / "probe.txt").write_text(PROBE_TEXT)
    (tmp_path / "domain.txt").write_text(
        "\n\n".join(f"Lemma {i}: the integral of x to the {i} is x to the {i + 1}." for i in range(30))
    )
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": str(gguf_path),
                "run_dir": str(tmp_path / "run"),
                "device": "cpu",
                "data": {
                    "domain_train": str(tmp_path / "domain.txt"),
                    "domain_heldout": str(tmp_path / "domain.txt"),
                    "general_probe": str(tmp_path / "probe.txt"),
                    "general_heldout": str(tmp_path / "probe.txt"),
                    "block_size": 32,
                },
                "importance": {"max_tokens": 500, "max_length": 48, "batch_size": 2, "metrics": ["masking"]},
                "expansion": {"num_new_layers": 1},
                "train": {
                    "methods": ["llama-pro"],
                    "training_args": {
                        "max_steps": 1,
                        "per_device_train_batch_size": 2,
                        "save_steps": 1,
                        "eval_steps": 1,
                        "disable_tqdm": True,
                    },
                },
                "evaluation": {"max_blocks": 2, "shift": False},
            }
        )
    )
    run_pipeline(load_config(config), progress=False)
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["model"] == str(gguf_path)
    (converted,) = (tmp_path / "cache" / "checkpoints").iterdir()
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["runs"][0]["model"] == str(converted)
    assert json.loads((run / "expanded" / "uniform" / "expansion.json").read_text())["inserted_layers"]
