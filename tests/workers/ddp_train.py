"""Worker for the 2-process DDP test: trains `adept` and records each rank's multipliers.

Run as ``torchrun --standalone --nproc_per_node 2 tests/workers/ddp_train.py WORKDIR OUT PER_DEVICE_BATCH``.
The test builds its single-process reference from the same `train_config`.
"""

import json
import os
import sys

from adept.training import AdeptCallback, TrainConfig


def train_config(workdir: str, out: str, batch: int) -> TrainConfig:
    return TrainConfig(
        model=f"{workdir}/expanded", data=[f"{workdir}/domain.txt"], output_dir=out, probe=f"{workdir}/probe.txt",
        block_size=32, reestimate_every=2, probe_max_length=48, probe_batch_size=2,
        training_args={
            "max_steps": 4, "per_device_train_batch_size": batch, "learning_rate": 5e-3, "logging_steps": 1,
            "save_steps": 100, "disable_tqdm": True, "use_cpu": True, "warmup_steps": 1,
            "ddp_timeout": 120,  # a collective mismatch fails in 2 minutes instead of hanging for 30
        },
    )


class Recording(AdeptCallback):
    """Appends this rank's multipliers to ``OUT/multipliers-rank{RANK}.jsonl`` after every estimate."""

    def reestimate(self, model, optimizer, scheduler, step, is_main):
        super().reestimate(model, optimizer, scheduler, step, is_main)
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(self.log_path.parent, f"multipliers-rank{rank}.jsonl"), "a") as handle:
            handle.write(json.dumps({"step": step, "multipliers": self.multipliers}) + "\n")


if __name__ == "__main__":
    import torch.distributed as dist

    import adept.training as training

    workdir, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    training.AdeptCallback = Recording
    cfg = train_config(workdir, out, batch)
    cfg.training_args["ddp_backend"] = "gloo"  # only under the launcher: a plain process has no group
    try:
        training.run_training(cfg, progress=False)
    finally:
        # Without this the launcher's workers linger on the open gloo group at exit.
        if dist.is_initialized():
            dist.destroy_process_group()
