"""Stage 2 end to end on tiny models: what trains, invariants against references, resume, NaN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PROBE_TEXT, save_tiny_checkpoint
from safetensors.torch import load_file

from adept.config import METHODS, ProbeConfig
from adept.expansion import expand_checkpoint, plan_expansion
from adept.stage2 import AdeptCallback
from adept.trainer import NonFiniteLossError
from adept.training import TrainConfig, run_training

DOMAIN = "\n\n".join(
    f"Lemma {i}. If n is an integer then n(n+{i % 5 + 1}) has a factor; the proof splits on the parity of n."
    for i in range(60)
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    save_tiny_checkpoint(root / "base", "llama")
    expand_checkpoint(root / "base", root / "expanded", plan_expansion(4, [1, 2]))
    (root / "probe.txt").write_text(PROBE_TEXT)
    (root / "domain.txt").write_text(DOMAIN)
    (root / "heldout.txt").write_text(DOMAIN[:600])
    from adept.config import ImportanceSection
    from adept.importance import run_importance

    run_importance(
        root / "base",
        root / "probe.txt",
        root / "imp",
        ImportanceSection(max_tokens=50_000, max_length=48, batch_size=4),
        progress=False,
    )
    return root


def _config(ws: Path, out: Path, method: str = "adept", **overrides) -> TrainConfig:
    training_args = {
        "max_steps": 6,
        "per_device_train_batch_size": 2,
        "learning_rate": 5e-3,
        "save_steps": 3,
        "logging_steps": 1,
        "disable_tqdm": True,
        "warmup_steps": 1,
        **overrides.pop("training_args", {}),
    }
    model = ws / ("expanded" if method in ("adept", "llama-pro", "adept-no-stage2") else "base")
    kwargs = dict(
        model=str(model),
        data=[str(ws / "domain.txt")],
        output_dir=str(out),
        method=method,
        probe_data=str(ws / "probe.txt"),
        block_size=32,
        reestimate_every=2,
        probe=ProbeConfig(max_length=48),
        importance=str(ws / "imp"),
        num_layers=2,
        training_args=training_args,
    )
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_and_reports_its_trainable_share(workspace, tmp_path, method):
    out = tmp_path / method
    final = run_training(_config(workspace, out, method), progress=False)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["method"] == method and summary["global_step"] == 6
    assert 0 < summary["trainable_share"] <= 1
    if method == "full":
        assert summary["trainable_share"] == 1
    if method in ("adept", "llama-pro", "adept-no-stage2"):
        assert summary["trainable_layers"] == [2, 4]
        assert (final / "expansion.json").is_file()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.num_hidden_layers == (6 if method in ("adept", "llama-pro", "adept-no-stage2") else 4)
    assert (out / "unit_rates.jsonl").exists() == (method in ("adept", "adept-no-stage1"))


def test_only_inserted_layers_change_and_zero_multiplier_units_stay(workspace, tmp_path):
    """Frozen tensors are bit-identical; trainable ones change unless their multiplier is 0."""
    frozen_unit = "model.layers.2.mlp.up_proj.weight"

    class ZeroOne(AdeptCallback):
        def estimate(self, model):
            scores, multipliers = super().estimate(model)
            return scores, {**multipliers, frozen_unit: 0.0}

    final = run_training(_config(workspace, tmp_path / "run"), progress=False, adept_callback=ZeroOne)
    before = _weights(workspace / "expanded")
    after = _weights(final)
    assert before.keys() == after.keys()
    for key in before:
        trainable = key.startswith(("model.layers.2.", "model.layers.4."))
        if not trainable or key == frozen_unit:
            assert torch.equal(before[key], after[key]), key
        else:
            assert not torch.equal(before[key], after[key]), key


def test_all_ones_matches_a_plain_trainer(workspace, tmp_path):
    """Per-unit groups with every multiplier 1 follow the plain Trainer's loss trajectory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer

    from adept.data import build_packed_dataset, collate_blocks
    from adept.training import freeze_all_but, layer_parameter_names, make_training_arguments

    class Ones(AdeptCallback):
        def estimate(self, model):
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            return {n: 0.0 for n in names}, {n: 1.0 for n in names}

    run_training(_config(workspace, tmp_path / "ours"), progress=False, adept_callback=Ones)
    ours = [
        e["loss"]
        for e in json.loads((tmp_path / "ours" / "training_summary.json").read_text())["log_history"]
        if "loss" in e
    ]

    cfg = _config(workspace, tmp_path / "plain", method="adept-no-stage2")
    model = AutoModelForCausalLM.from_pretrained(workspace / "expanded")
    freeze_all_but(model, layer_parameter_names(model, [2, 4]))
    tokenizer = AutoTokenizer.from_pretrained(workspace / "expanded")
    data = build_packed_dataset(cfg.data, tokenizer, 32, cache_dir=tmp_path / "cache")
    trainer = Trainer(model=model, args=make_training_arguments(cfg), train_dataset=data, data_collator=collate_blocks)
    trainer.train()
    plain = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(ours) == len(plain) == 6
    assert ours == pytest.approx(plain, rel=1e-6, abs=1e-7)
    assert ours[0] != ours[-1]


def test_reestimation_leaves_training_bit_identical(workspace, tmp_path):
    """A run that computes importance equals one that is handed the same rates without computing."""
    final = run_training(_config(workspace, tmp_path / "computed"), progress=False)
    log = [json.loads(line) for line in (tmp_path / "computed" / "unit_rates.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [0, 2, 4]
    assert len(set(log[1]["multipliers"].values())) > 1  # rates really differ per unit
    by_step = {entry["step"]: entry for entry in log}

    class Injected(AdeptCallback):
        step = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.step = state.global_step
            return super().on_step_end(args, state, control, **kwargs)

        def estimate(self, model):
            entry = by_step[self.step]
            return entry["importance"], entry["multipliers"]

    injected = run_training(_config(workspace, tmp_path / "injected"), progress=False, adept_callback=Injected)
    a, b = _weights(final), _weights(injected)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_after_interruption_is_bit_identical(workspace, tmp_path):
    straight = run_training(_config(workspace, tmp_path / "straight"), progress=False)

    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:  # after the checkpoint at step 3 and a re-estimation at 4
                raise KeyboardInterrupt

    import adept.training as training

    original = training.NonFiniteLossGuard
    training.NonFiniteLossGuard = Kill
    try:
        with pytest.raises(KeyboardInterrupt):
            run_training(_config(workspace, tmp_path / "resumed"), progress=False)
    finally:
        training.NonFiniteLossGuard = original
    assert (tmp_path / "resumed" / "checkpoint-3" / "adept_tuning_state.json").is_file()
    assert not (tmp_path / "resumed" / "model").exists()
    # A later checkpoint cut short while saving (weights half written, no trainer state) is
    # skipped: the run resumes from checkpoint-3 and overwrites it when it reaches step 6.
    partial = tmp_path / "resumed" / "checkpoint-6"
    partial.mkdir()
    whole = (tmp_path / "resumed" / "checkpoint-3" / "model.safetensors").read_bytes()
    (partial / "model.safetensors").write_bytes(whole[: len(whole) // 2])
    resumed = run_training(_config(workspace, tmp_path / "resumed"), progress=False)
    a, b = _weights(straight), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_a = (tmp_path / "straight" / "unit_rates.jsonl").read_text().splitlines()
    log_b = (tmp_path / "resumed" / "unit_rates.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log_b] == [0, 2, 4]
    assert [json.loads(x)["multipliers"] for x in log_a] == [json.loads(x)["multipliers"] for x in log_b]


def test_nan_loss_stops_with_message_and_keeps_checkpoint(workspace, tmp_path):
    out = tmp_path / "nan"
    run_training(_config(workspace, out, training_args={"max_steps": 3}), progress=False)
    assert (out / "checkpoint-3").is_dir()
    model_dir = tmp_path / "poisoned"
    import shutil

    shutil.copytree(workspace / "expanded", model_dir)
    weights = _weights(model_dir)
    weights["model.layers.2.self_attn.q_proj.weight"][0, 0] = float("nan")
    from safetensors.torch import save_file

    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    cfg = _config(workspace, tmp_path / "nan2", model=str(model_dir), method="adept-no-stage2")
    with pytest.raises(NonFiniteLossError, match="loss became nan at step 1"):
        run_training(cfg, progress=False)
    assert not (tmp_path / "nan2" / "model").exists()


def test_config_errors_are_named(workspace, tmp_path):
    with pytest.raises(ValueError, match="did you mean 'adept'"):
        _config(workspace, tmp_path, method="adpet")
    with pytest.raises(
        ValueError, match="training_args.learnig_rate is not a TrainingArguments field \\(did you mean 'learning_rate'"
    ):
        from adept.training import make_training_arguments

        make_training_arguments(_config(workspace, tmp_path, training_args={"learnig_rate": 1}))
    zero3 = tmp_path / "ds_zero3.json"
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ValueError, match="training_args.deepspeed: ZeRO stage 3 needs zero_optimization.stage3_gather"):
        _config(workspace, tmp_path, method="full", training_args={"deepspeed": str(zero3)})
    zero3.write_text(json.dumps({"zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}))
    _config(workspace, tmp_path, training_args={"deepspeed": str(zero3)})
    with pytest.raises(ValueError, match="training_args.fsdp_config.version: method 'adept-no-stage1' .* needs FSDP2"):
        _config(
            workspace,
            tmp_path,
            method="adept-no-stage1",
            importance=str(workspace / "imp"),
            num_layers=1,
            training_args={"fsdp": True, "fsdp_config": {"version": 1}},
        )
    with pytest.raises(FileNotFoundError, match="needs an expanded checkpoint"):
        run_training(_config(workspace, tmp_path / "x", model=str(workspace / "base")), progress=False)


def test_public_api_inside_a_plain_trainer(workspace, tmp_path):
    """The README recipe: build_param_groups + AdeptCallback in an unmodified transformers Trainer."""
    from torch.optim import AdamW
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from adept.data import build_packed_dataset, collate_blocks, load_probe_batches
    from adept.expansion import load_manifest
    from adept.stage2 import AdeptCallback, initial_copy_scores
    from adept.training import freeze_all_but, layer_parameter_names
    from adept.tuning import MultiplierRule, build_param_groups

    expanded = workspace / "expanded"
    model = AutoModelForCausalLM.from_pretrained(expanded)
    tokenizer = AutoTokenizer.from_pretrained(expanded)
    manifest = load_manifest(expanded / "expansion.json")
    trainable = layer_parameter_names(model, [layer["layer_idx"] for layer in manifest["inserted_layers"]])
    freeze_all_but(model, trainable)
    optimizer = AdamW(build_param_groups(model, trainable, base_lr=5e-3))
    probe = load_probe_batches(
        workspace / "probe.txt", tokenizer, ProbeConfig(max_length=48, max_tokens=2000, batch_size=2)
    )
    rule = MultiplierRule()
    scores, source = initial_copy_scores(model, manifest, rule, probe, importance=workspace / "imp" / "importance.json")
    callback = AdeptCallback(
        probe,
        rule,
        reestimate_every=2,
        log_path=tmp_path / "unit_rates.jsonl",
        initial_scores=scores,
        initial_source=source,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    train = build_packed_dataset(workspace / "domain.txt", tokenizer, 32, cache_dir=tmp_path / "cache")
    Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=collate_blocks,
        optimizers=(optimizer, None),
        callbacks=[callback],
    ).train()

    assert len(optimizer.param_groups) == len(trainable)
    rates = {group["unit"]: group["lr"] for group in optimizer.param_groups}
    for unit, multiplier in callback.multipliers.items():
        assert rates[unit] == pytest.approx(5e-3 * multiplier)  # constant schedule: lr = base * m exactly
    assert len(set(callback.multipliers.values())) > 1
    log = [json.loads(line) for line in (tmp_path / "unit_rates.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [0, 2]
    assert log[0]["source"] == source and len(set(log[0]["multipliers"].values())) > 1


def test_dynamic_rates_refuse_fsdp1_which_has_no_units():
    from torch import nn
    from torch.distributed.fsdp import FullyShardedDataParallel

    from adept.distributed import check_engine

    model = nn.Sequential(nn.Linear(4, 4))
    check_engine(model)  # plain model, no engine: accepted
    # FSDP1 only builds on an accelerator; an uninitialised wrapper is enough for the type check.
    fsdp1 = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
    nn.Module.__init__(fsdp1)
    model.add_module("wrapped", fsdp1)
    with pytest.raises(ValueError, match='need FSDP2: set "version": 2 in fsdp_config'):
        check_engine(model)


def test_gradient_checkpointing_changes_memory_not_results(workspace, tmp_path):
    """With checkpointing on, the probe (eval mode, autograd.grad) and training give the same run."""
    runs = {}
    for checkpointing in (False, True):
        out = tmp_path / f"checkpointing-{checkpointing}"
        run_training(_config(workspace, out, training_args={"gradient_checkpointing": checkpointing}), progress=False)
        summary = json.loads((out / "training_summary.json").read_text())
        rates = [json.loads(line) for line in (out / "unit_rates.jsonl").read_text().splitlines()]
        runs[checkpointing] = ([e["loss"] for e in summary["log_history"] if "loss" in e], rates)
    (plain_losses, plain_rates), (ckpt_losses, ckpt_rates) = runs[False], runs[True]
    assert len(ckpt_losses) == 6
    assert ckpt_losses == pytest.approx(plain_losses, rel=1e-5)
    assert [r["step"] for r in ckpt_rates] == [r["step"] for r in plain_rates] == [0, 2, 4]
    for got, want in zip(ckpt_rates, plain_rates):
        assert got["multipliers"] == pytest.approx(want["multipliers"], rel=1e-4, abs=1e-5)
    assert len(set(ckpt_rates[-1]["multipliers"].values())) > 1
