"""2 processes on CPU (gloo, torchrun), DDP and FSDP2: same results as one process, same multipliers on every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROBE_TEXT, save_tiny_checkpoint
from safetensors.torch import load_file
from workers import fsdp_train
from workers.trainer_train import Recording, train_config

import adept.training as training
from adept.expansion import expand_checkpoint, plan_expansion

pytestmark = pytest.mark.distributed

WORKERS = Path(__file__).parent / "workers"
TIMEOUT_S = 300


def _torchrun(nproc: int, worker: str, *args) -> str:
    """Run a test worker script under torchrun on ``nproc`` CPU processes; returns its output."""
    return _launch(nproc, str(WORKERS / worker), *map(str, args))


def _launch(nproc: int, *target: str) -> str:
    """``torchrun --standalone --nproc_per_node N TARGET...`` (a script, or ``-m module args``); its output."""
    # --standalone lets torchrun pick a free port for its own rendezvous store; a fixed
    # --master_port would collide between concurrent runs, and --master_port 0 is handed to the
    # workers verbatim, so they wait forever to connect to port 0.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parent.parent / "src"),
        "DS_ACCELERATOR": "cpu",  # DeepSpeed's CPU accelerator, for the deepspeed engine
        "PYTHONFAULTHANDLER": "1",
    }  # a worker killed by a signal prints every thread's stack
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *target]
    # Own session, so a timeout kills the workers too, not just the launcher.
    launcher = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    try:
        output, _ = launcher.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{output[-3000:]}")
    assert launcher.returncode == 0, output[-3000:]
    return output


def _losses(out: Path) -> list[float]:
    summary = json.loads((out / "training_summary.json").read_text())
    return [entry["loss"] for entry in summary["log_history"] if "loss" in entry]


def _multipliers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _workdir(tmp_path: Path) -> None:
    save_tiny_checkpoint(tmp_path / "base", "llama")
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan_expansion(4, [1, 2]))
    (tmp_path / "probe.txt").write_text(PROBE_TEXT)
    # Stage 1 scores with the training probe's settings, for the runs that read step-0 rates from them.
    from adept.config import ImportanceSection
    from adept.importance import run_importance

    probe = ImportanceSection(max_tokens=20_000, max_length=48, batch_size=2, seed=0, metrics=["grad_weight"])
    run_importance(tmp_path / "base", tmp_path / "probe.txt", tmp_path / "importance", probe, progress=False)
    (tmp_path / "domain.txt").write_text(
        "\n\n".join(f"Axiom {i}: every set has a power set of size two to the n." for i in range(80))
    )


@pytest.fixture(scope="module")
def trainer_reference(tmp_path_factory):
    """A workdir and the single-process `run_training` reference with the global batch (4)."""
    root = tmp_path_factory.mktemp("trainer")
    _workdir(root)
    # One thread, like the workers: on a busy 2-core machine two OpenMP threads per process
    # make every op wait for a descheduled sibling and run tens of times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        training.run_training(
            train_config(str(root), str(root / "single"), 4), progress=False, adept_callback=Recording
        )
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.mark.parametrize("engine", ["ddp", "fsdp2", "zero2", "zero3"])
def test_trainer_matches_single_process(trainer_reference, engine):
    """`adept train` under torchrun, 2 ranks x batch 2, equals one process with batch 4.

    The probe's 3 batches split 2 + 1 over the DDP and ZeRO-2 ranks, so unequal shares are
    covered too; under FSDP2 and ZeRO-3 both ranks score all 3 on their own parameter shards.
    """
    if engine.startswith("zero"):
        pytest.importorskip("deepspeed")
    root = trainer_reference
    _torchrun(2, "trainer_train.py", root, root / engine, 2, engine)

    single, multi = _losses(root / "single"), _losses(root / engine)
    assert len(single) == len(multi) == 4
    assert multi == pytest.approx(single, rel=1e-4)

    ranks = [_multipliers(root / engine / f"multipliers-rank{r}.jsonl") for r in (0, 1)]
    assert [e["step"] for e in ranks[0]] == [0, 2]
    assert ranks[0] == ranks[1]  # identical, not just close: sums are all-reduced before the rule
    assert all(e["sharded"] == (engine in ("fsdp2", "zero3")) for e in ranks[0])
    reference = _multipliers(root / "single" / "multipliers-rank0.jsonl")
    assert [e["step"] for e in reference] == [0, 2]
    for got, want in zip(ranks[0], reference):
        assert got["multipliers"].keys() == want["multipliers"].keys()
        for key in want["multipliers"]:
            assert got["multipliers"][key] == pytest.approx(want["multipliers"][key], rel=1e-3, abs=1e-4)
    assert len(set(ranks[0][1]["multipliers"].values())) > 1

    # The final checkpoint (gathered from the shards under FSDP2) holds the same weights.
    want, got = (load_file(str(root / run / "model" / "model.safetensors")) for run in ("single", engine))
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_sharded_resume_is_bit_identical(trainer_reference, engine):
    """Resuming from checkpoint-2 ends with the weights and rate log of an unbroken run."""
    import shutil

    if engine == "zero3":
        pytest.importorskip("deepspeed")
    root = trainer_reference
    unbroken, resumed = root / f"{engine}-unbroken", root / f"{engine}-resumed"
    _torchrun(2, "trainer_train.py", root, unbroken, 2, engine, 2)
    # A run that died after saving checkpoint-2: its checkpoint and its rate log so far.
    resumed.mkdir()
    shutil.copytree(unbroken / "checkpoint-2", resumed / "checkpoint-2")
    lines = (unbroken / "unit_rates.jsonl").read_text().splitlines()
    (resumed / "unit_rates.jsonl").write_text("".join(line + "\n" for line in lines if json.loads(line)["step"] <= 2))
    _torchrun(2, "trainer_train.py", root, resumed, 2, engine, 2)

    assert (resumed / "unit_rates.jsonl").read_text() == (unbroken / "unit_rates.jsonl").read_text()
    # The resumed run restored the rates from the checkpoint instead of estimating again.
    assert not (resumed / "multipliers-rank0.jsonl").exists()
    want, got = (load_file(str(run / "model" / "model.safetensors")) for run in (unbroken, resumed))
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name


@pytest.mark.parametrize("nproc, replicas", [(2, 1), (4, 2)], ids=["fsdp-2", "hsdp-2x2"])
def test_fsdp2_sharded_importance_matches_single_process(tmp_path, nproc, replicas):
    """FSDP2 ``fully_shard`` (and HSDP: 2 replicas x 2 shards): per-unit scores summed from each
    rank's shard equal the unsharded ones."""
    _workdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = fsdp_train.train(str(tmp_path), shard=False)
    finally:
        torch.set_num_threads(threads)
    _torchrun(nproc, "fsdp_train.py", tmp_path, tmp_path / "fsdp", replicas)

    ranks = [json.loads((tmp_path / "fsdp" / f"rank{r}.json").read_text()) for r in range(nproc)]
    for result in ranks:  # really sharded: each rank holds about half of every tensor
        assert result["all_dtensor"]
        assert result["local_numel"] < 0.6 * result["full_numel"]
    assert all(result["history"] == ranks[0]["history"] for result in ranks)  # identical, not just close
    history = ranks[0]["history"]
    assert [e["step"] for e in history] == [e["step"] for e in reference["history"]] == [0, 2]
    for got, want in zip(history, reference["history"]):
        assert got["importance"].keys() == want["importance"].keys()
        for unit, score in want["importance"].items():
            assert got["importance"][unit] == pytest.approx(score, rel=1e-4, abs=1e-9), unit
        for unit, multiplier in want["multipliers"].items():
            assert got["multipliers"][unit] == pytest.approx(multiplier, rel=1e-4, abs=1e-5), unit
        assert got["lr"] == pytest.approx(want["lr"], rel=1e-4, abs=1e-9)
    assert set(history[0]["multipliers"].values()) == {1.0}  # fresh copies score zero everywhere
    assert len(set(history[1]["multipliers"].values())) > 1
    assert ranks[0]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    weights = torch.load(tmp_path / "fsdp" / "weights.pt")
    assert weights.keys() == reference["weights"].keys()
    for name, tensor in reference["weights"].items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    # The gathered checkpoint is an ordinary one: plain class name, same trained weights.
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "model")
    assert saved.config.architectures == ["LlamaForCausalLM"]
    saved_params = dict(saved.named_parameters())
    for name, tensor in reference["weights"].items():
        torch.testing.assert_close(saved_params[name].detach(), tensor, rtol=1e-4, atol=1e-6, msg=name)


def test_adept_run_under_torchrun_and_its_resume(tmp_path):
    """`torchrun --nproc-per-node 2 -m adept.cli run`: rank 0 runs the single-process stages, both ranks train
    (DDP on gloo), one table is printed; a run that died during training resumes from its checkpoint."""
    save_tiny_checkpoint(tmp_path / "base", "llama")
    (tmp_path / "probe.txt").write_text(PROBE_TEXT)
    (tmp_path / "domain.txt").write_text(
        "\n\n".join(f"Axiom {i}: every set has a power set of size two to the n." for i in range(80))
    )
    (tmp_path / "heldout.txt").write_text(PROBE_TEXT.replace("river", "road"))
    config = tmp_path / "run.yaml"
    config.write_text(f"""
model: {tmp_path / "base"}
run_dir: {tmp_path / "run"}
device: cpu
data: {{domain_train: {tmp_path / "domain.txt"}, general_probe: {tmp_path / "probe.txt"},
        general_heldout: {tmp_path / "heldout.txt"}, domain_heldout: {tmp_path / "domain.txt"}, block_size: 32}}
importance: {{max_tokens: 2000, max_length: 48, batch_size: 2, metrics: [masking, grad_weight]}}
expansion: {{num_new_layers: 1}}
train:
  methods: [adept]
  reestimate_every: 2
  probe: {{max_length: 48, batch_size: 2}}
  training_args: {{max_steps: 4, per_device_train_batch_size: 1, learning_rate: 0.005, save_steps: 2, logging_steps: 1,
                  disable_tqdm: true, ddp_timeout: 120}}
evaluation: {{batch_size: 4, max_blocks: 2, shift: false}}
""")
    output = _launch(2, "-m", "adept.cli", "run", str(config))
    run = tmp_path / "run"
    assert output.count("| adept |") == 1  # rank 0 prints the table, rank 1 nothing
    summary = json.loads((run / "train" / "adept" / "training_summary.json").read_text())
    assert (summary["world_size"], summary["tokens_per_step"], summary["global_step"]) == (2, 2 * 32, 4)
    results = json.loads((run / "eval" / "results.json").read_text())
    assert [row["label"] for row in results["comparison"]] == ["base", "adept"]
    assert (run / "report" / "index.html").is_file()
    records = json.loads((run / "pipeline.json").read_text())["stages"]
    assert all(record["status"] == "done" for record in records.values())

    # The run died while training after checkpoint-2: its record says running, its model and later checkpoint are gone.
    import shutil

    checkpoint = run / "train" / "adept" / "checkpoint-2"
    saved_at = (checkpoint / "trainer_state.json").stat().st_mtime_ns
    shutil.rmtree(run / "train" / "adept" / "model")
    shutil.rmtree(run / "train" / "adept" / "checkpoint-4")
    records["train:adept"]["status"] = "running"
    (run / "pipeline.json").write_text(
        json.dumps({**json.loads((run / "pipeline.json").read_text()), "stages": records})
    )
    output = _launch(2, "-m", "adept.cli", "run", str(config))
    assert "up to date, skipped: data, importance, expand:adept, eval:base" in output
    assert f"resuming from {checkpoint}" in output
    assert (checkpoint / "trainer_state.json").stat().st_mtime_ns == saved_at
    resumed = json.loads((run / "train" / "adept" / "training_summary.json").read_text())
    assert resumed["global_step"] == 4 and resumed["train_steps"] == 4
    assert [e["loss"] for e in resumed["log_history"] if "loss" in e] == pytest.approx(
        [e["loss"] for e in summary["log_history"] if "loss" in e], rel=1e-5
    )
