"""`adept interpolate`: alpha 0 is where training started (for an expanded run, the base model's
function), alpha 1 the trained model, both exactly; in between differs from both. Bad input fails
in one line with exit code 2 and leaves no output folder."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import byte_tokenizer, randomize_, save_tiny_checkpoint, tiny_config
from transformers import AutoModelForCausalLM

from adept.architectures import get_architecture
from adept.cli import main
from adept.expansion import MANIFEST_NAME, expand_checkpoint, load_manifest, plan_expansion
from adept.interpolation import interpolate_state_dict, run_interpolation, starting_state_dict

IDS = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 33, 10, 84, 104]])


def _logits(path: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        return model(IDS).logits


def _error_line(stderr: str) -> str:
    """The error: one line, the last on stderr (above it only transformers' loading bars, if any)."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def _perturb_and_save(source: Path, target: Path, names, seed: int = 1) -> None:
    """A stand-in for a trained model: ``names``' tensors moved by random noise, saved as a checkpoint."""
    model = AutoModelForCausalLM.from_pretrained(source, attn_implementation="eager", dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(name.startswith(prefix) for prefix in names):
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
    model.save_pretrained(target)
    byte_tokenizer().save_pretrained(target)
    if (source / MANIFEST_NAME).is_file():
        shutil.copy2(source / MANIFEST_NAME, target / MANIFEST_NAME)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base model, its expansion (copies of layers 1 and 2 at indices 2 and 4), an 'adept run'
    whose copies moved (saved under run/model like `adept train`), and a 'full CPT' model."""
    root = tmp_path_factory.mktemp("interp")
    save_tiny_checkpoint(root / "base", "llama")
    expand_checkpoint(root / "base", root / "expanded", plan_expansion(4, [1, 2]))
    _perturb_and_save(root / "expanded", root / "run" / "model", ["model.layers.2.", "model.layers.4."])
    (root / "run" / "training_summary.json").write_text(json.dumps({"method": "adept"}))
    _perturb_and_save(root / "base", root / "full", ["model."], seed=2)
    return root


def test_alpha_zero_and_one_are_exact_and_half_is_in_between(models, tmp_path):
    base, tuned = _logits(models / "base"), _logits(models / "run" / "model")
    assert not torch.equal(base, tuned)  # the perturbation does change the function
    outputs = {}
    for alpha in (0.0, 0.5, 1.0):
        out = tmp_path / f"alpha{alpha}"
        assert (
            main(
                [
                    "interpolate",
                    "--base",
                    str(models / "base"),
                    "--tuned",
                    str(models / "run"),
                    "--alpha",
                    str(alpha),
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        outputs[alpha] = _logits(out)
    assert torch.equal(outputs[0.0], base)  # the initial copies preserve the base model's function
    assert torch.equal(outputs[1.0], tuned)
    middle = outputs[0.5]
    assert not torch.allclose(middle, base, atol=1e-4) and not torch.allclose(middle, tuned, atol=1e-4)

    out = tmp_path / "alpha0.5"
    record = json.loads((out / "interpolation.json").read_text())
    assert record["kind"] == "interpolation" and record["schema_version"] >= 1 and record["alpha"] == 0.5
    assert record["tuned"] == str(models / "run" / "model") and record["base"] == str(models / "base")
    assert record["start"] == "base expanded as in expansion.json" and record["method"] == "adept"
    assert load_manifest(out) == load_manifest(models / "expanded")
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()
    # Frozen layers are untouched and each copy sits halfway between its initial copy and its trained value.
    start = AutoModelForCausalLM.from_pretrained(models / "expanded").state_dict()
    trained = AutoModelForCausalLM.from_pretrained(models / "run" / "model").state_dict()
    got = AutoModelForCausalLM.from_pretrained(out).state_dict()
    for name in got:
        torch.testing.assert_close(got[name], (start[name] + trained[name]) / 2, rtol=0, atol=1e-6, msg=name)
        if not name.startswith(("model.layers.2.", "model.layers.4.")):
            assert torch.equal(got[name], start[name]), name


def test_the_expanded_starting_checkpoint_is_accepted_as_base(models, tmp_path):
    for base in ("base", "expanded"):
        run_interpolation(models / base, models / "run" / "model", tmp_path / base, 0.3)
    a, b = (AutoModelForCausalLM.from_pretrained(tmp_path / base).state_dict() for base in ("base", "expanded"))
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert (
        json.loads((tmp_path / "expanded" / "interpolation.json").read_text())["start"]
        == "expanded starting checkpoint"
    )


def test_full_cpt_interpolates_towards_the_base(models, tmp_path, caplog):
    base, tuned = _logits(models / "base"), _logits(models / "full")
    for alpha in (0.0, 1.0):
        run_interpolation(models / "base", models / "full", tmp_path / str(alpha), alpha)
    assert torch.equal(_logits(tmp_path / "0.0"), base) and torch.equal(_logits(tmp_path / "1.0"), tuned)
    assert json.loads((tmp_path / "0.0" / "interpolation.json").read_text())["start"] == "base"
    assert not (tmp_path / "0.0" / MANIFEST_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="adept.interpolation"):
        run_interpolation(models / "base", models / "full", tmp_path / "beyond", 1.5)  # extrapolation: allowed, warned
    assert any("outside [0, 1]" in record.getMessage() for record in caplog.records)


def test_core_functions_are_exact_and_check_shapes(models):
    generator = torch.Generator().manual_seed(0)
    start = {"a": torch.randn(5, 3, generator=generator), "b": torch.randn(7, generator=generator).to(torch.bfloat16)}
    tuned = {
        name: tensor + torch.randn(tensor.shape, generator=generator).to(tensor.dtype) for name, tensor in start.items()
    }
    assert all(torch.equal(interpolate_state_dict(start, tuned, 0.0)[n], start[n]) for n in start)
    assert all(torch.equal(interpolate_state_dict(start, tuned, 1.0)[n], tuned[n]) for n in start)
    assert interpolate_state_dict(start, tuned, 0.5)["b"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="tensor 'a' has shape"):
        interpolate_state_dict(start, {**tuned, "a": torch.zeros(3, 5)}, 0.5)
    with pytest.raises(ValueError, match="'c' is only in the tuned model"):
        interpolate_state_dict(start, {**tuned, "c": torch.zeros(1)}, 0.5)
    # The starting state dict is the expanded checkpoint, bit for bit.
    base = AutoModelForCausalLM.from_pretrained(models / "base").state_dict()
    manifest = load_manifest(models / "expanded")
    rebuilt = starting_state_dict(base, manifest, get_architecture("llama"))
    expanded = AutoModelForCausalLM.from_pretrained(models / "expanded").state_dict()
    assert rebuilt.keys() == expanded.keys() and all(torch.equal(rebuilt[n], expanded[n]) for n in rebuilt)
    wrong = {
        **manifest,
        "initialized_tensors": {**manifest["initialized_tensors"], "model.layers.2.mlp.up_proj.weight": 0.0},
    }
    with pytest.raises(ValueError, match="initialized_tensors do not match"):
        starting_state_dict(base, wrong, get_architecture("llama"))


@pytest.mark.parametrize(
    ("base", "alpha", "message"),
    [
        ("base", "nan", "--alpha must be a finite number"),
        ("small", "0.5", "--base has 3 layers; the tuned model was expanded from 4 into 6"),
        ("run/model", "0.5", "--base is not the expanded starting checkpoint"),  # the tuned model itself
        ("missing", "0.5", "config.json"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_output(models, tmp_path, capsys, base, alpha, message):
    if base == "small" and not (models / "small").exists():
        save_tiny_checkpoint(models / "small", "llama", num_hidden_layers=3)
    capsys.readouterr()
    out = tmp_path / "out"
    code = main(
        [
            "interpolate",
            "--base",
            str(models / base),
            "--tuned",
            str(models / "run"),
            "--alpha",
            alpha,
            "--output",
            str(out),
        ]
    )
    err = _error_line(capsys.readouterr().err)
    assert code == 2 and message in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_mismatched_shapes_name_the_tensor(models, tmp_path, capsys):
    """A full-CPT base of another width: the error names the first tensor whose shape differs."""
    config = tiny_config("llama")
    config.intermediate_size = 48
    other = randomize_(AutoModelForCausalLM.from_config(config))
    other.save_pretrained(tmp_path / "other")
    byte_tokenizer().save_pretrained(tmp_path / "other")
    capsys.readouterr()
    code = main(
        [
            "interpolate",
            "--base",
            str(tmp_path / "other"),
            "--tuned",
            str(models / "full"),
            "--alpha",
            "0.5",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    err = _error_line(capsys.readouterr().err)
    assert code == 2 and "tensor 'model.layers.0.mlp.gate_proj.weight' has shape (48, 32)" in err
    assert not (tmp_path / "out").exists()
