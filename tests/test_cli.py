"""The `adept` command end to end: importance -> expansion, artifacts on disk, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_checkpoint
from transformers import AutoModelForCausalLM

from adept.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base"
    save_tiny_checkpoint(path, "qwen3", num_hidden_layers=6)
    return path


def _importance(base, probe_file, out):
    argv = ["importance", "--model", str(base), "--probe", str(probe_file), "--output", str(out)]
    return main(argv + ["--device", "cpu", "--max-length", "48", "--batch-size", "2"])


def test_importance_then_expand_by_importance(tmp_path, base, probe_file, capsys):
    assert _importance(base, probe_file, tmp_path / "imp") == 0
    payload = json.loads((tmp_path / "imp" / "importance.json").read_text())
    assert payload["kind"] == "importance" and payload["schema_version"] == 1
    assert payload["model_type"] == "qwen3" and payload["num_layers"] == 6
    assert set(payload["layer_ranking"]) == {"masking", "grad_weight", "rank", "fisher"}
    for name in ("unit_importance.png", "layer_importance.png"):
        assert (tmp_path / "imp" / name).read_bytes()[:8] == PNG_MAGIC
    assert "importance:" in capsys.readouterr().out

    out = tmp_path / "expanded"
    argv = [
        "expand",
        "--model",
        str(base),
        "--output",
        str(out),
        "--importance",
        str(tmp_path / "imp" / "importance.json"),
    ]
    assert main(argv + ["--num-new-layers", "2", "--metric", "grad_weight"]) == 0
    manifest = json.loads((out / "expansion.json").read_text())
    least = sorted(payload["layer_ranking"]["grad_weight"][-2:])
    assert manifest["source_layers"] == least
    assert manifest["selection"]["method"] == "importance" and manifest["selection"]["metric"] == "grad_weight"
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 8

    # Budget selection: each qwen3 tiny layer is a fixed share; 20% admits exactly 2 copies here.
    out2 = tmp_path / "budget"
    argv = ["expand", "--model", str(base), "--output", str(out2), "--importance", str(tmp_path / "imp")]
    assert main(argv + ["--trainable-fraction", "0.2"]) == 0
    manifest = json.loads((out2 / "expansion.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(out2)
    copies = {layer["layer_idx"] for layer in manifest["inserted_layers"]}
    trainable = sum(p.numel() for i, layer in enumerate(model.model.layers) if i in copies for p in layer.parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 0 < trainable / total <= 0.2
    one_more = trainable + trainable // len(copies)
    assert one_more / (total + trainable // len(copies)) > 0.2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layers", "1,1"], "duplicate layer ids [1]"),
        (["--layers", "9"], "out of range"),
        (["--layers", "a,b"], "comma-separated integers"),
        (["--num-new-layers", "2"], "need --importance"),
        (["--layers", "1", "--num-new-layers", "2"], "exactly one of"),
        (["--uniform", "7"], "--uniform must be between 1 and 6"),
    ],
)
def test_bad_expand_arguments_give_one_line_errors(tmp_path, base, capsys, extra, message):
    code = main(["expand", "--model", str(base), "--output", str(tmp_path / "out")] + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_uniform_expansion_records_its_selection(tmp_path, base):
    from adept.expansion import load_manifest

    assert main(["expand", "--model", str(base), "--output", str(tmp_path / "pro"), "--uniform", "2"]) == 0
    manifest = load_manifest(tmp_path / "pro" / "expansion.json")
    assert [layer["source_layer_idx"] for layer in manifest["inserted_layers"]] == [2, 5]
    assert manifest["selection"]["method"] == "uniform"


def test_unknown_option_is_a_usage_error_not_a_traceback(tmp_path, base, capsys):
    assert main(["expand", "--model", str(base), "--output", str(tmp_path / "o"), "--layrs", "1"]) == 2
    err = capsys.readouterr().err
    assert "No such option: --layrs" in err and "Traceback" not in err


def test_non_empty_output_is_refused_and_missing_model_named(tmp_path, base, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["expand", "--model", str(base), "--output", str(out), "--layers", "1"]) == 2
    assert "not empty (pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").exists()
    assert main(["expand", "--model", str(tmp_path / "missing"), "--output", str(tmp_path / "o"), "--layers", "1"]) == 2
    assert "missing/config.json: not found" in capsys.readouterr().err


def test_unsupported_architecture_lists_supported(tmp_path, probe_file, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=300)).save_pretrained(tmp_path / "gpt2")
    assert main(["expand", "--model", str(tmp_path / "gpt2"), "--output", str(tmp_path / "o"), "--layers", "0"]) == 2
    err = capsys.readouterr().err
    assert "model_type 'gpt2' is not supported" in err and "qwen3" in err


def test_console_script_runs(tmp_path, base):
    script = Path(sys.executable).with_name("adept")
    done = subprocess.run(
        [str(script), "expand", "--model", str(base), "--output", str(tmp_path / "e"), "--layers", "0,5"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "expanded checkpoint:" in done.stdout
    original = AutoModelForCausalLM.from_pretrained(base, attn_implementation="eager").eval()
    expanded = AutoModelForCausalLM.from_pretrained(tmp_path / "e", attn_implementation="eager").eval()
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        assert torch.equal(original(ids).logits, expanded(ids).logits)
    assert subprocess.run([str(script), "--help"], capture_output=True, timeout=60).returncode == 0


def test_train_command_with_tokenize_workers(base, tmp_path):
    """`adept train` end to end on the CLI, tokenising in 2 processes; errors stay one line."""
    domain = tmp_path / "domain.txt"
    domain.write_text("\n\n".join(f"Theorem {i}: the sum of two even numbers is even." for i in range(40)))
    argv = [
        "train",
        "--model",
        str(base),
        "--data",
        str(domain),
        "--method",
        "full",
        "--block-size",
        "32",
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--tokenize-workers",
        "2",
        "--set",
        "use_cpu=true",
        "--set",
        "disable_tqdm=true",
    ]
    assert main(argv + ["--output", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["global_step"] == 2 and summary["config"]["tokenize_workers"] == 2
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert main(argv + ["--output", str(tmp_path / "bad"), "--set", "learnig_rate=1"]) == 2


def _flags(command: str) -> dict:
    """Flag -> default of an `adept` command, as click sees it (required flags: ``...``)."""
    import typer.main

    from adept.cli import app

    params = typer.main.get_command(app).commands[command].params
    return {p.opts[0]: (... if p.required else p.default) for p in params if p.opts[0] != "--help"}


def _config_flags(cls, rename=None, nested=None) -> dict:
    """Flag -> default of every field of ``cls`` by the naming rule: ``--field-name``; a nested
    section's fields with ``nested[section]`` in front; list flags given as None mean the field's []."""
    import dataclasses
    import typing

    from adept.config import default_of

    hints = typing.get_type_hints(cls)
    flags = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            flags |= {
                f"--{nested[f.name]}{flag[2:]}": default for flag, default in _config_flags(hints[f.name]).items()
            }
            continue
        default = default_of(f)
        flags[f"--{(rename or {}).get(f.name, f.name).replace('_', '-')}"] = (
            ... if default is dataclasses.MISSING else default
        )
    return flags


def test_train_and_importance_flags_are_their_config_keys_with_the_same_defaults():
    """A flag that drifts from its setting (name or default) fails here."""
    from adept.config import DEFAULT_TRAINING_ARGS, ImportanceSection, PipelineConfig, TrainConfig

    train = _config_flags(
        TrainConfig, rename={"output_dir": "output", "probe_data": "probe"}, nested={"rule": "", "probe": "probe-"}
    )
    del train["--training-args"]
    shortcuts = {
        "--learning-rate": "learning_rate",
        "--max-steps": "max_steps",
        "--batch-size": "per_device_train_batch_size",
        "--gradient-accumulation-steps": "gradient_accumulation_steps",
        "--seed": "seed",
        "--gradient-checkpointing": "gradient_checkpointing",
    }
    train |= {flag: DEFAULT_TRAINING_ARGS[key] for flag, key in shortcuts.items()} | {"--set": None}
    train["--learning-rate"] = None  # absent: the method's own (default_training_args)
    train["--bf16"] = None  # absent: on with a bf16 --dtype (make_training_arguments)
    actual = _flags("train")
    for flag in ("--eval-data", "--replay-data"):  # repeatable: absent means the field's empty list
        assert actual[flag] is None and train[flag] == []
        actual[flag] = []
    assert actual == train

    from adept.config import DataSection

    importance = _config_flags(ImportanceSection) | {
        "--device": PipelineConfig().device,
        "--dtype": PipelineConfig().dtype,
        "--attn-implementation": PipelineConfig().attn_implementation,
        "--text-field": DataSection().text_field,
    }
    importance |= {"--model": ..., "--probe": ..., "--output": ..., "--txt-split": "paragraph"}
    actual = _flags("importance")
    assert actual.pop("--metrics").split(",") == importance.pop("--metrics")
    assert actual == importance
    assert (importance["--max-tokens"], importance["--max-length"], importance["--batch-size"]) == (20_000, 256, 8)


def test_train_flags_reach_the_training_config(tmp_path, monkeypatch):
    """Defaults give TrainConfig's defaults; each flag lands on its own key."""
    import adept.training
    from adept.config import MultiplierRule, ProbeConfig, TrainConfig

    seen = []
    monkeypatch.setattr(adept.training, "run_training", lambda cfg: seen.append(cfg) or tmp_path)
    base = ["train", "--model", str(tmp_path), "--data", "d.txt", "--output", "out", "--probe", "p.txt"]
    assert main(base) == 0
    shortcut_args = {
        "max_steps": -1,
        "per_device_train_batch_size": 8,
        "gradient_accumulation_steps": 1,
        "seed": 0,
        "data_seed": 0,
        "gradient_checkpointing": False,
    }
    assert seen[-1] == TrainConfig(
        model=str(tmp_path), data=["d.txt"], output_dir="out", probe_data="p.txt", training_args=shortcut_args
    )
    assert (
        main(
            base
            + [
                "--method",
                "adept-no-stage1",
                "--importance",
                "i.json",
                "--num-layers",
                "2",
                "--scale",
                "3",
                "--ceiling",
                "4",
                "--probe-max-tokens",
                "123",
                "--probe-batch-size",
                "2",
                "--eval-data",
                "e.txt",
                "--no-resume",
                "--seed",
                "5",
                "--set",
                "warmup_steps=1e-1",
                "--set",
                "report_to=[tensorboard]",
            ]
        )
        == 0
    )
    cfg = seen[-1]
    assert cfg.method == "adept-no-stage1" and cfg.importance == "i.json" and cfg.num_layers == 2 and not cfg.resume
    assert cfg.rule == MultiplierRule(scale=3.0, ceiling=4.0) and cfg.probe == ProbeConfig(max_tokens=123, batch_size=2)
    assert cfg.eval_data == ["e.txt"] and cfg.training_args["seed"] == cfg.training_args["data_seed"] == 5
    assert cfg.training_args["warmup_steps"] == 0.1 and cfg.training_args["report_to"] == ["tensorboard"]
