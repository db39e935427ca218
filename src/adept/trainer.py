"""The Trainer every method runs in, the callbacks every run gets, and what they measure.

`GuardedTrainer` is the Hugging Face Trainer plus the NaN/inf guard (`check_finite_loss`, the one
check of the training loss) and the seconds spent in evaluation and checkpoint saves; Stage 2's
`adept.stage2.AdeptTrainer` builds on it. The callbacks stop on a non-finite logged loss, time
the optimizer steps and keep backward out of frozen layers; `PeakMemory` measures a run's peak
memory. Also the checkpoint folders the Trainer leaves: the current one and the newest complete
one to resume from. `adept.training.run_training` wires all of it into a run.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import math
import os
import resource
import threading
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TIMING_NAME = "adept_timing.json"


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


def check_finite_loss(loss: float, when: str, output_dir: str | os.PathLike) -> None:
    """Raise `NonFiniteLossError` when the training loss is NaN or infinite; ``when`` says at which step."""
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"training loss became {loss} {when}; stopped. "
            f"The last good checkpoint in {output_dir} is kept (lower the learning rate or check the data)"
        )


class GuardedTrainer(Trainer):
    """The Trainer plus a NaN/inf guard and the time spent in evaluation and checkpoint saves."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_seconds = 0.0
        self.save_seconds = 0.0

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        check_finite_loss(loss.item(), f"at step {self.state.global_step + 1}", self.args.output_dir)
        return loss

    def evaluate(self, *args, **kwargs):
        # With several eval sets, Trainer.evaluate calls itself once per set: count the outer call only.
        if getattr(self, "_in_evaluate", False):
            return super().evaluate(*args, **kwargs)
        self._in_evaluate = True
        start = time.perf_counter()
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self._in_evaluate = False
            self.eval_seconds += time.perf_counter() - start

    def _save_checkpoint(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super()._save_checkpoint(*args, **kwargs)
        finally:
            self.save_seconds += time.perf_counter() - start


class NonFiniteLossGuard(TrainerCallback):
    """Stops training with a clear error when the logged loss is NaN or infinite."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None:
            check_finite_loss(loss, f"by step {state.global_step}", args.output_dir)


class StepTimer(TrainerCallback):
    """Seconds spent in optimizer steps only: forward, backward, clipping, optimizer and scheduler.

    Evaluation, checkpoint saves and importance probes run outside the timed span (this
    callback must come before `AdeptCallback`, whose refresh runs in ``on_step_end``). The
    totals are saved in every checkpoint, so a resumed run reports the time of all its steps.
    """

    def __init__(self):
        self.seconds = 0.0
        self.steps = 0
        self._start: float | None = None

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        saved = checkpoint_dir(args, state) / TIMING_NAME
        if state.global_step > 0 and saved.is_file():
            timing = json.loads(saved.read_text())
            self.seconds, self.steps = float(timing["seconds"]), int(timing["steps"])

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = self._now()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.seconds += self._now() - self._start
            self.steps += 1
            self._start = None

    def on_save(self, args, state, control, **kwargs):
        folder = checkpoint_dir(args, state)
        if state.is_world_process_zero and folder.is_dir():
            (folder / TIMING_NAME).write_text(json.dumps({"seconds": self.seconds, "steps": self.steps}) + "\n")


class FrozenPrefixCallback(TrainerCallback):
    """Keeps backward out of the frozen layers below the lowest trainable one.

    With activation checkpointing, transformers hooks the input embeddings so their output
    requires grad; autograd then runs backward through every frozen layer down to the
    embeddings. Non-reentrant checkpointing does not need that (only reentrant checkpointing,
    and LoRA under it, do), so the hook is removed once training has set checkpointing up.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not (getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing):
            return
        options = getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs or {}
        if options.get("use_reentrant", False):
            return
        if hasattr(model, "disable_input_require_grads"):
            model.disable_input_require_grads()


def checkpoint_dir(args, state) -> Path:
    """The Trainer's checkpoint folder for the current step (where our callbacks keep their state)."""
    return Path(args.output_dir) / f"checkpoint-{state.global_step}"


def last_complete_checkpoint(output_dir: Path) -> str | None:
    """The newest complete ``checkpoint-N``: one holding the trainer state, which is saved last.

    A run killed while saving leaves a checkpoint without it, and resuming from that one would
    fail; it is skipped with a warning, so the run resumes from the complete one before it.
    """
    if not output_dir.is_dir():
        return None
    steps = {}
    for path in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if path.is_dir() and step.isdigit():
            steps[int(step)] = path
    for step in sorted(steps, reverse=True):
        if (steps[step] / TRAINER_STATE_NAME).is_file():
            return str(steps[step])
        logger.warning(
            "%s is incomplete (no %s; the run stopped while saving it): not resuming from it",
            steps[step],
            TRAINER_STATE_NAME,
        )
    return None


class PeakMemory:
    """Peak memory of one training run, comparable between methods run in the same process.

    On CUDA: ``torch.cuda.max_memory_allocated`` (weights, gradients, optimizer state,
    activations). On CPU: the peak resident set size sampled while the block runs, minus the
    resident size when the monitor was created (before the model was loaded), so the Python and
    library footprint and earlier runs in the same process do not count.
    """

    def __init__(self, interval: float = 0.02):
        gc.collect()
        try:  # hand memory freed by an earlier run in this process back to the OS first
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.interval = interval
        self.baseline = _rss_bytes()
        self.peak = self.baseline
        self._stop = None
        self._thread = None
        self.device: torch.device | None = None

    def start(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            return
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, _rss_bytes())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Stop sampling; returns the peak in bytes."""
        if self.device is not None and self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())
        return int(self.peak - self.baseline)


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc), else the lifetime peak from getrusage."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
