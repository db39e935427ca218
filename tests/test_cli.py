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


def _commands() -> dict:
    """Every command registered on the `adept` app, sub-commands included: ``"analyze shift"`` -> click command."""
    import typer.main

    from adept.cli import app

    def walk(group, prefix):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):  # a group (typer ships its own copy of click's classes)
                yield from walk(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", command

    return dict(walk(typer.main.get_command(app), ""))


def _flags(command: str) -> dict:
    """Flag -> default of an `adept` command, as click sees it (required flags: ``...``)."""
    params = _commands()[command].params
    return {p.opts[0]: (... if p.required else p.default) for p in params if p.opts[0] != "--help"}


# Flags that set no config key, by command: inputs and outputs of one invocation, and `adept run`'s
# overrides of its config file (None keeps the file's train.methods and run_dir). A flag of a new
# command (`adept sweep`) is made from its config field, or listed here.
CLI_ONLY = {
    "importance": {"--model", "--probe", "--output", "--txt-split"},
    "expand": {"--model", "--output", "--importance", "--uniform", "--overwrite"},
    "train": {"--set"},
    "run": {"--compare", "--run-dir"},
    "report": {"--output"},
    "eval": {"--model", "--output", "--label"},
    "convert": {"--output", "--dtype", "--overwrite"},
    "interpolate": {"--base", "--tuned", "--alpha", "--output", "--overwrite"},
    "analyze shift": {"--base", "--tuned", "--data", "--output", "--top-k"},
    "sweep": {"--dry-run", "--max-runs"},
}
# A flag is --field-name, the fields of train's nested sections with a prefix ("" for rule, "probe-"
# for probe), except these, named for what one command-line value is.
RENAMED = {
    "output_dir": "--output",
    "probe_data": "--probe",
    "benchmark_seed": "--seed",
    "shift_max_blocks": "--max-blocks",
    "general_heldout": "--general",
    "domain_heldout": "--domain",
    "general_benchmarks": "--general-benchmark",
    "domain_benchmarks": "--domain-benchmark",
}
NESTED = {"rule": "--", "probe": "--probe-"}


def _expected_flag(path: str) -> str:
    *section, name = path.split(".")
    prefix = NESTED[section[0]] if section else "--"
    return RENAMED.get(name, prefix + name.replace("_", "-"))


def test_the_commands_under_test_are_registered():
    expected = {"importance", "expand", "train", "eval", "analyze shift", "run", "interpolate"}
    assert expected <= set(_commands())
    assert set(CLI_ONLY) <= set(_commands()), "CLI_ONLY names a command that is gone"


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_flag_that_sets_a_config_key_has_its_default_and_help(name):
    """A flag made by hand for a config key, or one that drifts from it (name, default, help), fails here.

    Picks up every command on the app, so a new one (`adept sweep`) is checked without a change here.
    """
    import dataclasses

    from adept.cli_options import DERIVED_DEFAULTS, TRAINING_ARG_FLAGS
    from adept.config import DEFAULT_TRAINING_ARGS, default_of

    command = _commands()[name]
    generated = getattr(command.callback, "setting_options", {})
    for param in command.params:
        if param.param_type_name != "option" or param.name == "help":
            continue
        flag = param.opts[0]
        if param.name in generated:
            option = generated[param.name]
            default = default_of(option.field)
            assert flag == _expected_flag(option.path), f"adept {name} {flag} sets {option.path}"
            assert param.help == option.field.metadata["help"], f"adept {name} {flag}: not the help of {option.path}"
            if option.from_config:  # a command reading a config file: absent, the file's value stands
                assert param.default is None and not param.required, flag
            elif default is dataclasses.MISSING:
                assert param.required, flag
            elif option.comma:  # a list as one comma-separated value
                assert param.default == (None if default is None else ",".join(map(str, default))), flag
            elif isinstance(default, (list, dict)):  # repeatable (NAME=VALUE for a mapping); absent: the default
                assert param.multiple and param.default is None, flag
            else:
                assert param.default == default, (
                    f"adept {name} {flag}: default {param.default}, {option.path} {default}"
                )
        elif name == "train" and param.name in TRAINING_ARG_FLAGS:  # shortcuts for training_args keys
            key = TRAINING_ARG_FLAGS[param.name][0]
            assert param.default == (None if key in DERIVED_DEFAULTS else DEFAULT_TRAINING_ARGS[key]), flag
        else:
            assert flag in CLI_ONLY.get(name, ()), (
                f"adept {name} {flag} is written by hand: make it from its config field "
                "(adept.cli_options.setting_options), or list it in CLI_ONLY if it sets no config key"
            )


def test_the_stage_commands_have_a_flag_for_every_setting_of_their_section():
    """A setting added to one of these sections gets its flag without a change to the command."""
    import dataclasses
    import typing

    from adept.config import ExpansionSection, ImportanceSection, TrainConfig

    def leaves(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                yield from leaves(hints[f.name], f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    def paths(command):
        return {option.path for option in _commands()[command].callback.setting_options.values()}

    assert paths("train") == set(leaves(TrainConfig)) - {"training_args"}
    assert paths("importance") >= set(leaves(ImportanceSection))
    assert paths("expand") == set(leaves(ExpansionSection))


def test_analyze_shift_takes_the_configs_shift_defaults():
    """Changed default: --max-blocks was 64; it is evaluation.shift_max_blocks now, as in `adept run`."""
    from adept.config import DataSection, EvaluationSection

    flags = _flags("analyze shift")
    assert flags["--max-blocks"] == EvaluationSection().shift_max_blocks == 32
    assert flags["--batch-size"] == EvaluationSection().batch_size
    assert flags["--block-size"] == DataSection().block_size


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


def test_expand_eval_and_shift_flags_reach_their_runners(tmp_path, monkeypatch):
    """The generated flags land on the runners' keywords, with the config's defaults when absent."""
    import adept.evaluation
    import adept.expansion
    import adept.shift

    calls = {}

    def record(name):
        return lambda *args, **kwargs: calls.setdefault(name, []).append((args, kwargs)) or tmp_path

    monkeypatch.setattr(adept.expansion, "run_expansion", record("expand"))
    monkeypatch.setattr(adept.shift, "run_shift", record("shift"))
    monkeypatch.setattr(adept.evaluation, "run_evaluation", record("eval"))
    monkeypatch.setattr(adept.evaluation, "read_results", lambda path: {})
    monkeypatch.setattr(adept.evaluation, "comparison_markdown", lambda results: "")
    monkeypatch.setattr(adept.evaluation, "benchmark_markdown", lambda results: "")
    model = str(tmp_path)

    assert main(["expand", "--model", model, "--output", "o", "--layers", "1, 3"]) == 0
    assert calls["expand"][-1][1] == {
        "importance_path": None,
        "uniform": None,
        "overwrite": False,
        "num_new_layers": None,
        "trainable_fraction": None,
        "layers": [1, 3],
        "metric": "masking",
    }
    assert main(["expand", "--model", model, "--output", "o", "--importance", "i.json", "--num-new-layers", "2"]) == 0
    assert calls["expand"][-1][1]["layers"] is None and calls["expand"][-1][1]["num_new_layers"] == 2

    argv = ["analyze", "shift", "--base", model, "--tuned", model, "--data", "g.txt", "--output", "o"]
    assert main(argv) == 0
    assert calls["shift"][-1][1] == {
        "block_size": 256,
        "max_blocks": 32,
        "top_k": 20,
        "batch_size": 8,
        "device": "auto",
        "dtype": "float32",
        "attn_implementation": "sdpa",
        "text_field": "text",
    }

    argv = ["eval", "--model", model, "--output", "o", "--general", "g.txt", "--general-benchmark", "arc_easy"]
    assert main(argv) == 0
    kwargs = calls["eval"][-1][1]
    assert (
        kwargs["general"] == [Path("g.txt")] and kwargs["domain"] == [] and kwargs["general_benchmarks"] == ["arc_easy"]
    )
    assert (kwargs["block_size"], kwargs["batch_size"], kwargs["max_blocks"], kwargs["limit"], kwargs["seed"]) == (
        256,
        8,
        None,
        None,
        1234,
    )
    assert main(argv + ["--limit", "50", "--seed", "7", "--domain", "d.txt", "--device", "cpu"]) == 0
    kwargs = calls["eval"][-1][1]
    assert kwargs["limit"] == 50 and isinstance(kwargs["limit"], int) and kwargs["seed"] == 7
    assert kwargs["domain"] == [Path("d.txt")] and kwargs["device"] == "cpu"
    assert main(argv + ["--limit", "0.5"]) == 0 and calls["eval"][-1][1]["limit"] == 0.5
    assert calls["eval"][-1][1]["limits"] == {}
    limits = ["--limits", "hellaswag=2000", "--limits", "arc_easy=0.5"]
    assert main(argv + limits) == 0 and calls["eval"][-1][1]["limits"] == {"hellaswag": 2000, "arc_easy": 0.5}
    assert isinstance(calls["eval"][-1][1]["limits"]["hellaswag"], int)
    for bad in ("hellaswag", "hellaswag=", "hellaswag=many", "hellaswag=0"):
        assert main(argv + ["--limits", bad]) == 2
