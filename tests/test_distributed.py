"""2-process DDP on CPU (gloo, torchrun): same losses as one process, same multipliers on every rank."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import adept.training as training
from adept.expansion import expand_checkpoint, plan_expansion

from conftest import PROBE_TEXT, save_tiny_checkpoint
from workers.ddp_train import Recording, train_config

WORKER = Path(__file__).parent / "workers" / "ddp_train.py"
TIMEOUT_S = 300


def _torchrun(nproc: int, workdir: Path, out: Path, batch: int) -> None:
    # --standalone lets torchrun pick a free port for its own rendezvous store; a fixed
    # --master_port would collide between concurrent runs, and --master_port 0 is handed to the
    # workers verbatim, so they wait forever to connect to port 0.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(WORKER), str(workdir), str(out), str(batch)]
    # Own session, so a timeout kills the workers too, not just the launcher.
    launcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)
    try:
        output, _ = launcher.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        output, _ = launcher.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{output[-3000:]}")
    assert launcher.returncode == 0, output[-3000:]


def _losses(out: Path) -> list[float]:
    summary = json.loads((out / "training_summary.json").read_text())
    return [entry["loss"] for entry in summary["log_history"] if "loss" in entry]


def _multipliers(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ddp_matches_single_process(tmp_path, monkeypatch):
    save_tiny_checkpoint(tmp_path / "base", "llama")
    expand_checkpoint(tmp_path / "base", tmp_path / "expanded", plan_expansion(4, [1, 2]))
    (tmp_path / "probe.txt").write_text(PROBE_TEXT)
    (tmp_path / "domain.txt").write_text("\n\n".join(f"Axiom {i}: every set has a power set of size two to the n." for i in range(80)))

    # The reference is one plain process with the global batch (4); DDP splits it 2 x 2. The
    # probe's 3 batches split 2 + 1 over the ranks, so unequal shares are covered too.
    # One thread, like the workers: on a busy 2-core machine two OpenMP threads per process
    # make every op wait for a descheduled sibling and run tens of times slower.
    monkeypatch.setattr(training, "AdeptCallback", Recording)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        training.run_training(train_config(str(tmp_path), str(tmp_path / "single"), 4), progress=False)
    finally:
        torch.set_num_threads(threads)
    _torchrun(2, tmp_path, tmp_path / "ddp", batch=2)

    single, ddp = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(single) == len(ddp) == 4
    assert ddp == pytest.approx(single, rel=1e-4)

    ranks = [_multipliers(tmp_path / "ddp" / f"multipliers-rank{r}.jsonl") for r in (0, 1)]
    assert [e["step"] for e in ranks[0]] == [0, 2]
    assert ranks[0] == ranks[1]  # identical, not just close: sums are all-reduced before the rule
    reference = _multipliers(tmp_path / "single" / "multipliers-rank0.jsonl")
    assert [e["step"] for e in reference] == [0, 2]
    for got, want in zip(ranks[0], reference):
        assert got["multipliers"].keys() == want["multipliers"].keys()
        for key in want["multipliers"]:
            assert got["multipliers"][key] == pytest.approx(want["multipliers"][key], rel=1e-3, abs=1e-4)
    assert len(set(ranks[0][1]["multipliers"].values())) > 1
