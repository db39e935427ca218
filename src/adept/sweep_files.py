"""What a sweep's run directories keep on disk: each point's results always; its intermediate
checkpoints only with ``sweep.keep_checkpoints``; its trained model unless ``sweep.keep_models``
says otherwise: ``best`` drops every model a complete front no longer needs, ``none`` each model
as soon as its point is evaluated (a sweep without a dial).

A sweep of 30 points on a 7B model would otherwise keep 30 checkpoints of 14 GB. The best-gain
rate's models are the ones the forgetting dial moves back and a final comparison evaluates; the
others have done their work once their point is evaluated. A point stays done without its model
(`adept.fronts.is_done` reads its results), so a pruned sweep resumes and reports as before.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from adept.fronts import Front, best_rate, dial_points_done, is_complete, label_of
from adept.run_directory import train_dir
from adept.training import FINAL_MODEL_DIR, last_complete_checkpoint

logger = logging.getLogger(__name__)


def tidy(run_dir: Path, label: str, keep_checkpoints: bool = False, keep_model: bool = True) -> None:
    """Drop a finished point's intermediate checkpoints (GBs each), keeping its trainer log, and with
    ``keep_model`` false its trained model too (``sweep.keep_models: none``)."""
    out = train_dir(run_dir, label)
    if not keep_checkpoints:
        last = last_complete_checkpoint(out)
        if last is not None:
            shutil.copy2(Path(last) / "trainer_state.json", out / "trainer_state.json")
        for path in out.glob("checkpoint-*"):
            shutil.rmtree(path)
    if not keep_model and (out / FINAL_MODEL_DIR).is_dir():
        shutil.rmtree(out / FINAL_MODEL_DIR)


def machine_info(device: str) -> dict[str, Any]:
    """Where a point ran: what its time per token is a measure of."""
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    if device != "cpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def prune_models(
    root: Path, data: dict[str, Any], fronts: Sequence[Front], dials: Sequence[Front], seeds: Sequence[int]
) -> list[Path]:
    """``sweep.keep_models=best``: the models of every front that has each rate on each seed, but those
    of its best-gain rate, and the models of every evaluated dial point, are deleted; returns them.

    A front's best rate is fixed once it is complete (the seeds' mean gain, `adept.fronts.best_rate`);
    a seed added later trains its own points and keeps their models until the front is complete again.
    """
    gone = []
    for front in (f for f in fronts if is_complete(data, f, seeds)):
        best, _ = best_rate(data, front)
        gone += [(seed, label_of(front, rate)) for seed in seeds for rate in front.rates if rate != best]
    for dial in dials:
        gone += [(seed, label) for seed, label in dial_points_done(data, dial) if seed in seeds]
    deleted = []
    for seed, label in gone:
        model = train_dir(root / f"seed{seed}", label) / FINAL_MODEL_DIR
        if model.is_dir():
            shutil.rmtree(model)
            deleted.append(model)
    if deleted:
        logger.info("sweep.keep_models=best: %d models no front needs any more deleted", len(deleted))
    return deleted
