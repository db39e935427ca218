"""Stage 2 as the paper defines it: differentiated rates from step 0, the paper's unit score and
rule on the logged scores, a refresh schedule that fits the run, copies that stay near the
identity after training steps on every architecture, and backward that stays out of the frozen
layers below the copies."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import ARCHITECTURES, PROBE_TEXT, save_tiny_checkpoint
from transformers import AutoModelForCausalLM, TrainerCallback

from adept.architectures import get_architecture
from adept.cli import main
from adept.expansion import expand_checkpoint, plan_expansion
from adept.forward import residual_updates
from adept.stage2 import read_rate_log
from adept.training import TrainConfig, run_training
from adept.tuning import MultiplierRule

DOMAIN = "\n\n".join(
    f"Theorem {i}. Every bounded monotone sequence of reals converges; take the supremum of its {i % 7 + 2} terms."
    for i in range(60)
)


def _write_corpora(root: Path) -> None:
    (root / "probe.txt").write_text(PROBE_TEXT)
    (root / "domain.txt").write_text(DOMAIN)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    save_tiny_checkpoint(root / "base", "llama")
    expand_checkpoint(root / "base", root / "expanded", plan_expansion(4, [1, 2]))
    _write_corpora(root)
    return root


def _train_argv(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(root / "expanded"),
        "--data",
        str(root / "domain.txt"),
        "--output",
        str(out),
        "--probe",
        str(root / "probe.txt"),
        "--block-size",
        "32",
        "--batch-size",
        "2",
        *extra,
    ]


def test_default_adept_train_starts_with_differentiated_rates(llama, tmp_path):
    """With default settings the first rate-log line is step 0 and its multipliers differ: the
    copies start from their source layers' scores, not from their own all-zero ones."""
    out = tmp_path / "run"
    assert main(_train_argv(llama, out, "--max-steps", "4", "--set", "disable_tqdm=true")) == 0
    log = read_rate_log(out / "unit_rates.jsonl")
    assert log[0]["step"] == 0
    assert log[0]["source"] == "source layers on the probe"
    assert len(set(log[0]["multipliers"].values())) > 1
    # Refreshes score the copies themselves; four steps and no interval set: one per step. The
    # first step ran at warmup's zero rate, so at step 1 the copies still all score 0 and the
    # step-0 rates are kept rather than flattened to 1.
    assert [entry["step"] for entry in log] == [0, 1, 2, 3]
    assert log[1]["source"] == "probe (all scores equal: rates kept)"
    assert log[1]["multipliers"] == log[0]["multipliers"]
    assert [entry["source"] for entry in log[2:]] == ["probe", "probe"]
    assert len(set(log[3]["multipliers"].values())) > 1


def test_step0_scores_equal_the_source_layers_stage1_scores(llama, tmp_path):
    """From importance.json: the copy of layer s gets layer s's per-element mean scores, unit by
    unit (the zeroed output projections included); probing the source layers gives the same."""
    from adept.config import ImportanceSection
    from adept.importance import run_importance

    probe = ImportanceSection(max_tokens=20_000, max_length=256, batch_size=8, seed=0)
    run_importance(llama / "base", llama / "probe.txt", tmp_path / "imp", probe, progress=False)
    importance = json.loads((tmp_path / "imp" / "importance.json").read_text())
    runs = {}
    for name, source in (("stage1", str(tmp_path / "imp")), ("probe", None)):
        cfg = TrainConfig(
            model=str(llama / "expanded"),
            data=[str(llama / "domain.txt")],
            output_dir=str(tmp_path / name),
            probe_data=str(llama / "probe.txt"),
            importance=source,
            block_size=32,
            training_args={"max_steps": 1, "per_device_train_batch_size": 2, "disable_tqdm": True},
        )
        run_training(cfg, progress=False)
        runs[name] = read_rate_log(tmp_path / name / "unit_rates.jsonl")[0]
    assert runs["stage1"]["source"].startswith("importance.json of the source layers")
    units = importance["unit_names"]
    copies = {2: 1, 4: 2}  # expanded index -> source layer
    for key, score in runs["stage1"]["importance"].items():
        layer, unit = int(key.split(".")[2]), key.split(".", 3)[3]
        assert score == importance["unit_grad_weight_mean"][copies[layer]][units.index(unit)], key
        # The same probe settings as Stage 1, scored on the frozen source layers inside the expanded model.
        assert runs["probe"]["importance"][key] == pytest.approx(score, rel=1e-4, abs=1e-12), key
    assert runs["stage1"]["multipliers"] == pytest.approx(runs["probe"]["multipliers"], rel=1e-3, abs=1e-4)


def test_default_rule_is_the_papers_mean_and_linear_min_max(llama, tmp_path):
    """Every logged line: m = 2 (max - I) / (max - min), clamped to the floor, on the logged scores."""
    assert MultiplierRule().unit_score == "mean"
    out = tmp_path / "run"
    assert main(_train_argv(llama, out, "--max-steps", "3", "--set", "disable_tqdm=true")) == 0
    floor = MultiplierRule().floor
    log = read_rate_log(out / "unit_rates.jsonl")
    assert sum(entry["source"] == "probe" for entry in log) >= 1
    for entry in log:
        if "rates kept" in entry["source"]:
            continue
        scores = entry["importance"]
        hi, lo = max(scores.values()), min(scores.values())
        assert hi > lo
        for unit, score in scores.items():
            want = max(2 * (hi - score) / (hi - lo), floor)
            assert entry["multipliers"][unit] == pytest.approx(want, rel=1e-9), unit


def test_refresh_interval_follows_the_run_and_warns_when_it_never_refreshes(llama, tmp_path, caplog):
    from adept.stage2 import resolve_reestimate_every

    assert resolve_reestimate_every(None, None, 200) == 20
    assert resolve_reestimate_every(None, 0.25, 200) == 50
    assert resolve_reestimate_every(7, None, 200) == 7
    out = tmp_path / "never"
    cfg = TrainConfig(
        model=str(llama / "expanded"),
        data=[str(llama / "domain.txt")],
        output_dir=str(out),
        probe_data=str(llama / "probe.txt"),
        block_size=32,
        reestimate_every=5,
        training_args={"max_steps": 2, "per_device_train_batch_size": 2, "disable_tqdm": True},
    )
    with caplog.at_level(logging.WARNING, logger="adept.training"):
        run_training(cfg, progress=False)
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "reestimate_every" in r.getMessage()
    ]
    assert len(warnings) == 1 and "never refreshed" in warnings[0] and "train.reestimate_every" in warnings[0]
    assert [entry["step"] for entry in read_rate_log(out / "unit_rates.jsonl")] == [0]
    with pytest.raises(ValueError, match="reestimate_every or reestimate_fraction, not both"):
        TrainConfig(model="m", data=["d"], output_dir="o", probe_data="p", reestimate_every=2, reestimate_fraction=0.5)


def test_logged_learning_rate_is_the_base_rate_with_multiplier_range(llama, tmp_path):
    out = tmp_path / "run"
    argv = _train_argv(
        llama,
        out,
        "--max-steps",
        "2",
        "--learning-rate",
        "1e-3",
        "--set",
        "lr_scheduler_type=constant",
        "--set",
        "warmup_steps=0",
        "--set",
        "logging_steps=1",
        "--set",
        "disable_tqdm=true",
    )
    assert main(argv) == 0
    summary = json.loads((out / "training_summary.json").read_text())
    logs = [entry for entry in summary["log_history"] if "loss" in entry]
    assert len(logs) == 2
    rates = read_rate_log(out / "unit_rates.jsonl")
    for entry in logs:
        assert entry["learning_rate"] == pytest.approx(1e-3)
        # the multipliers in effect after the logged step (a refresh at that step included)
        multipliers = [r for r in rates if r["step"] <= entry["step"]][-1]["multipliers"].values()
        assert entry["lr_multiplier_min"] == pytest.approx(min(multipliers))
        assert entry["lr_multiplier_max"] == pytest.approx(max(multipliers))
        assert entry["lr_multiplier_mean"] == pytest.approx(sum(multipliers) / len(multipliers))
        assert entry["lr_multiplier_min"] < entry["lr_multiplier_max"]


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_copies_are_exact_then_stay_near_the_identity_after_a_step(tmp_path, model_type):
    """Exact logits after expansion, and after one `adept train` step at lr 1e-3 each copy's
    residual update |out - in| / |in| stays <= 0.05 (copies measure 0.001-0.041, source layers 0.29-1.7: a
    real layer's update). On post-norm models the norm's gain, not the projection, holds the zero."""
    original = save_tiny_checkpoint(tmp_path / "base", model_type)
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan_expansion(4, [0, 2]))
    _write_corpora(tmp_path)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(3))
    expanded = AutoModelForCausalLM.from_pretrained(tmp_path / "expanded", attn_implementation="eager").eval()
    with torch.no_grad():
        assert (original(ids).logits - expanded(ids).logits).abs().max().item() == 0.0
    manifest = json.loads((tmp_path / "expanded" / "expansion.json").read_text())
    spec = get_architecture(model_type)
    for key, value in manifest["initialized_tensors"].items():
        unit = key.split(".", 3)[3]
        assert value == spec.copy_init_value(unit)
    if spec.post_norms:  # the projections themselves are copied, never zeroed too
        assert not any("o_proj" in key or "down_proj" in key for key in manifest["initialized_tensors"])
        assert set(manifest["initialized_tensors"].values()) == {spec.post_norms[0][2]}

    argv = [
        "train",
        "--model",
        str(tmp_path / "expanded"),
        "--data",
        str(tmp_path / "domain.txt"),
        "--output",
        str(tmp_path / "run"),
        "--probe",
        str(tmp_path / "probe.txt"),
        "--block-size",
        "32",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
        "--learning-rate",
        "1e-3",
        "--set",
        "warmup_steps=0",
        "--set",
        "lr_scheduler_type=constant",
        "--set",
        "disable_tqdm=true",
    ]
    assert main(argv) == 0
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model", attn_implementation="eager").eval()
    updates = residual_updates(trained, ids)
    copies, sources = [1, 4], [0, 3]
    with torch.no_grad():
        assert (trained(ids).logits - expanded(ids).logits).abs().max().item() > 0  # the copies did train
    for idx in copies:
        assert updates[idx] <= 0.05, (model_type, idx, updates)
    for idx in sources:
        assert updates[idx] > 0.2, (model_type, idx, updates)


def test_gradient_checkpointing_skips_frozen_layers_below_the_copies(llama, tmp_path):
    """No backward runs in layers 0-1 (below the lowest copy, 2); the copies' gradients are
    those of a run without checkpointing."""

    class Probe(TrainerCallback):
        def __init__(self):
            self.backward_calls = 0
            self.grads: dict[str, torch.Tensor] = {}

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            def count(*_):
                self.backward_calls += 1

            for idx in (0, 1):
                model.model.layers[idx].register_full_backward_hook(count)

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if not self.grads:
                self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    probes = {}
    for checkpointing in (False, True):
        probe = Probe()
        cfg = TrainConfig(
            model=str(llama / "expanded"),
            data=[str(llama / "domain.txt")],
            output_dir=str(tmp_path / f"gc-{checkpointing}"),
            method="adept-no-stage2",
            block_size=32,
            training_args={
                "max_steps": 1,
                "per_device_train_batch_size": 2,
                "disable_tqdm": True,
                "gradient_checkpointing": checkpointing,
            },
        )
        run_training(cfg, progress=False, callbacks=[probe])
        probes[checkpointing] = probe
    assert probes[True].backward_calls == probes[False].backward_calls == 0
    plain, checkpointed = probes[False].grads, probes[True].grads
    assert plain.keys() == checkpointed.keys()
    assert {name.split(".")[2] for name in plain} == {"2", "4"}
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_timing_counts_optimizer_steps_and_survives_a_resume(llama, tmp_path):
    """train_seconds covers optimizer steps only (evaluation and saves on their own lines); after
    a resume it and tokens/s cover every step of the run, not the resumed part alone."""

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:  # after the checkpoint at step 2
                raise KeyboardInterrupt

    def cfg():
        return TrainConfig(
            model=str(llama / "expanded"),
            data=[str(llama / "domain.txt")],
            output_dir=str(tmp_path / "run"),
            method="adept-no-stage2",
            block_size=32,
            eval_data=[str(llama / "domain.txt"), str(llama / "probe.txt")],
            training_args={
                "max_steps": 4,
                "per_device_train_batch_size": 2,
                "disable_tqdm": True,
                "save_steps": 2,
                "eval_steps": 2,
            },
        )

    with pytest.raises(KeyboardInterrupt):
        run_training(cfg(), progress=False, callbacks=[Stop()])
    before = json.loads((tmp_path / "run" / "checkpoint-2" / "adept_timing.json").read_text())
    assert before["steps"] == 2 and before["seconds"] > 0
    run_training(cfg(), progress=False)
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["train_steps"] == 4
    assert summary["train_seconds"] > before["seconds"]
    assert summary["eval_seconds"] > 0 and summary["save_seconds"] > 0
    # The parts are disjoint spans of this process's wall time (two eval sets: each timed once).
    parts = summary["train_seconds"] - before["seconds"] + summary["eval_seconds"] + summary["save_seconds"]
    assert parts < summary["wall_seconds"]
    assert summary["tokens_per_second"] == pytest.approx(4 * 2 * 32 / summary["train_seconds"])


def test_copies_of_post_norm_models_come_with_a_warning_of_their_slow_start():
    from adept.architectures import SUPPORTED_ARCHITECTURES as SPECS
    from adept.training import post_norm_warning

    post_norm = {name for name, spec in SPECS.items() if spec.post_norms}
    assert {"gemma2", "gemma3_text", "olmo2"} <= post_norm
    for name in SPECS:
        message = post_norm_warning({"model_type": name}, 1e-3)
        assert (message is not None) == (name in post_norm), name
        if message:
            assert message.startswith(f"{name} is post-norm") and "learning rate 0.001" in message
    assert post_norm_warning(None, 1e-3) is None  # not an expanded model
