"""`adept run` end to end on a tiny model: stages, skipping, resuming after a crash, re-running on change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PROBE_TEXT, save_tiny_checkpoint
from transformers import TrainerCallback

import adept.training as training
from adept.cli import main
from adept.config import load_config
from adept.pipeline import Pipeline, run_pipeline

DOMAIN = "\n\n".join(
    f"Lemma {i}: the integral of x to the power {i} is x to the power {i + 1} over {i + 1}." for i in range(60)
)


def _mc(path: Path, words: list[str]) -> Path:
    lines = [
        json.dumps({"question": f"Which word is {w}?", "choices": [w, "stone", "river", "bread"], "answer": 0})
        for w in words
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def workspace(tmp_path):
    save_tiny_checkpoint(tmp_path / "base", "llama", num_hidden_layers=4)
    (tmp_path / "probe.txt").write_text(PROBE_TEXT)
    (tmp_path / "general.txt").write_text(PROBE_TEXT.replace("river", "road"))
    (tmp_path / "domain.txt").write_text(DOMAIN)
    (tmp_path / "domain_heldout.txt").write_text(DOMAIN.replace("integral", "derivative"))
    _mc(tmp_path / "general_mc.jsonl", ["apple", "cloud"])
    _mc(tmp_path / "domain_mc.jsonl", ["lemma", "integral"])
    training_args = (
        "{max_steps: 4, per_device_train_batch_size: 2, learning_rate: 0.005, save_steps: 2, logging_steps: 1, "
        "eval_steps: 2, disable_tqdm: true}"
    )
    config = tmp_path / "run.yaml"
    config.write_text(
        f"""
model: {tmp_path / "base"}
run_dir: {tmp_path / "run"}
device: cpu
data:
  domain_train: {tmp_path / "domain.txt"}
  domain_heldout: {tmp_path / "domain_heldout.txt"}
  general_probe: {tmp_path / "probe.txt"}
  general_heldout: {tmp_path / "general.txt"}
  general_benchmarks: {tmp_path / "general_mc.jsonl"}
  domain_benchmarks: {tmp_path / "domain_mc.jsonl"}
  block_size: 32
importance: {{max_tokens: 2000, max_length: 48, batch_size: 2, metrics: [masking, grad_weight]}}
expansion: {{num_new_layers: 1}}
train:
  methods: [adept]
  reestimate_every: 2
  probe: {{max_length: 48, batch_size: 2}}
  training_args: {training_args}
evaluation: {{batch_size: 4, max_blocks: 4, shift_max_blocks: 2}}
"""
    )
    return tmp_path, config


def _records(run: Path) -> dict:
    return json.loads((run / "pipeline.json").read_text())["stages"]


def test_run_writes_every_stage_and_skips_them_when_unchanged(workspace, capsys):
    tmp_path, config = workspace
    assert main(["run", str(config), "--compare", "adept,llama-pro,full"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "| adept" in out and "| llama-pro" in out and f"report: {run / 'report' / 'index.html'}" in out
    for rel in (
        "config.yaml",
        "data/data.json",
        "importance/importance.json",
        "expanded/adept/expansion.json",
        "expanded/uniform/expansion.json",
        "train/adept/unit_rates.jsonl",
        "train/full/model/config.json",
        "eval/results.json",
        "shift/adept/shift.json",
        "report/index.html",
    ):
        assert (run / rel).exists(), rel
    results = json.loads((run / "eval" / "results.json").read_text())
    assert [row["label"] for row in results["comparison"]] == ["base", "adept", "llama-pro", "full"]
    base_row, adept_row = results["comparison"][0], results["comparison"][1]
    assert base_row["general_loss_change"] == 0
    assert adept_row["trainable_share"] < results["comparison"][3]["trainable_share"] == 1.0
    # The expanded copy of the uniform baseline sits after the last layer of each half: source 3 for one copy.
    uniform = json.loads((run / "expanded" / "uniform" / "expansion.json").read_text())
    assert [layer["source_layer_idx"] for layer in uniform["inserted_layers"]] == [3]

    stamps = {stage: record["time"] for stage, record in _records(run).items()}
    importance_mtime = (run / "importance" / "importance.json").stat().st_mtime_ns
    assert main(["run", str(config), "--compare", "adept,llama-pro,full"]) == 0
    assert "up to date, skipped: data, importance, expand:adept, expand:uniform, train:adept" in capsys.readouterr().out
    assert {stage: record["time"] for stage, record in _records(run).items()} == stamps
    assert (run / "importance" / "importance.json").stat().st_mtime_ns == importance_mtime


def test_the_base_model_can_be_evaluated_alone_first(workspace):
    tmp_path, config = workspace
    cfg = load_config(config)
    results = Pipeline(cfg).evaluate_base()
    assert results == tmp_path / "run" / "eval" / "base" / "results.json" and results.is_file()
    assert list(_records(tmp_path / "run")) == ["eval:base"]
    _, pipeline = run_pipeline(cfg)
    assert "eval:base" in pipeline.skipped and "train:adept" in pipeline.ran


def test_benchmark_limits_rerun_the_evaluation_only_when_set(workspace):
    """evaluation.limits left empty keeps finished evaluations current; set, it reruns them with its limits."""
    tmp_path, config = workspace
    Pipeline(load_config(config)).evaluate_base()
    empty = Pipeline(load_config(config, ["evaluation.limits={}"]))
    empty.evaluate_base()
    assert empty.skipped == ["eval:base"]
    limited = Pipeline(load_config(config, ["evaluation.limits={general_mc: 1}"]))
    run = json.loads(limited.evaluate_base().read_text())["runs"][0]
    assert limited.ran == ["eval:base"]
    assert (run["benchmarks"]["general_mc"]["n"], run["benchmarks"]["domain_mc"]["n"]) == (1, 2)


def test_changing_a_training_key_reruns_only_training_and_later(workspace):
    tmp_path, config = workspace
    _, first = run_pipeline(load_config(config), progress=False)
    assert "importance" in first.ran and "train:adept" in first.ran
    _, second = run_pipeline(load_config(config, ["train.training_args.max_steps=6"]), progress=False)
    assert set(second.skipped) == {"data", "importance", "expand:adept", "eval:base"}
    assert {"train:adept", "eval:adept", "shift:adept"} <= set(second.ran)
    summary = json.loads((tmp_path / "run" / "train" / "adept" / "training_summary.json").read_text())
    assert summary["global_step"] == 6


class _Crash(TrainerCallback):
    """Dies like a killed process once the checkpoint of step 2 is complete, during step 3."""

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt


def test_crash_during_training_resumes_from_checkpoint_without_redoing_stage1(workspace, monkeypatch):
    tmp_path, config = workspace
    run = tmp_path / "run"
    guard = training.NonFiniteLossGuard

    class Crashing(guard, _Crash):
        pass

    monkeypatch.setattr(training, "NonFiniteLossGuard", Crashing)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(load_config(config), progress=False)
    assert _records(run)["train:adept"]["status"] == "running"
    assert (run / "train" / "adept" / "checkpoint-2").is_dir()
    assert not (run / "train" / "adept" / "model").exists()
    importance_mtime = (run / "importance" / "importance.json").stat().st_mtime_ns

    monkeypatch.setattr(training, "NonFiniteLossGuard", guard)
    resumed_from = []
    original = training.last_complete_checkpoint
    monkeypatch.setattr(
        training, "last_complete_checkpoint", lambda out: resumed_from.append(original(out)) or resumed_from[-1]
    )
    _, pipeline = run_pipeline(load_config(config), progress=False)
    assert {"importance", "expand:adept"} <= set(pipeline.skipped)
    assert resumed_from == [str(run / "train" / "adept" / "checkpoint-2")]
    assert (run / "importance" / "importance.json").stat().st_mtime_ns == importance_mtime
    steps = [
        json.loads(line)["step"] for line in (run / "train" / "adept" / "unit_rates.jsonl").read_text().splitlines()
    ]
    assert steps == [0, 2]  # re-estimated at 0 and 2 before the crash; the log continues without repeats


def test_bad_config_gives_one_line_error_naming_the_key(workspace, capsys):
    tmp_path, config = workspace
    assert main(["run", str(config), "train.training_args.learnig_rate=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"error: {config}: unknown key 'train.training_args.learnig_rate' (did you mean "
        "'train.training_args.learning_rate'?)"
    )
    assert main(["run", str(config), "data.domain_train=missing.txt"]) == 2
    assert "error: data.domain_train[0]: missing.txt: no such file or directory" in capsys.readouterr().err
    assert main(["run", str(config), f"data.domain_train={tmp_path}/shards/*.parquet"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: data.domain_train[0]: ")
        and "the glob matches no file" in err
        and len(err.splitlines()) == 1
    )
    assert not (tmp_path / "run" / "train").exists()


@pytest.mark.slow
def test_sigkill_during_training_then_rerun_resumes(workspace):
    """The real thing: SIGKILL the `adept run` process once a checkpoint exists, run it again."""
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp_path, config = workspace
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "adept.cli",
        "run",
        str(config),
        "train.training_args.max_steps=300",
        "train.training_args.save_steps=20",
        "train.training_args.eval_steps=1000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (run / "train" / "adept" / "checkpoint-20" / "adept_tuning_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "train" / "adept" / "model").exists()
    importance_mtime = (run / "importance" / "importance.json").stat().st_mtime_ns

    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stage importance: up to date, skipped" in done.stderr
    assert "resuming from" in done.stderr and "checkpoint-" in done.stderr
    assert (run / "importance" / "importance.json").stat().st_mtime_ns == importance_mtime
    summary = json.loads((run / "train" / "adept" / "training_summary.json").read_text())
    assert summary["global_step"] == 300
    steps = [
        json.loads(line)["step"] for line in (run / "train" / "adept" / "unit_rates.jsonl").read_text().splitlines()
    ]
    assert steps == list(range(0, 300, 2))  # every re-estimation exactly once across the kill
