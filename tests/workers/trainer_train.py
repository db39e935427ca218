"""Worker for the 2-process Trainer tests: trains `adept` and records each rank's multipliers.

Run as ``torchrun --standalone --nproc_per_node 2 tests/workers/trainer_train.py WORKDIR OUT
PER_DEVICE_BATCH [ddp|fsdp2|zero2|zero3 [SAVE_STEPS]]``. The tests build their single-process
reference from the same `train_config`.

Accelerate turns FSDP and DeepSpeed on only when it finds an accelerator; two small stand-ins
let the Trainer, Accelerate and the engine take their real paths on CPU with gloo:

* ``fsdp2`` runs `run_training` with ``fsdp=True`` (FSDP2, transformers' default version);
  `CpuFsdpTrainer` flips Accelerate's state to FSDP right after the accelerator is built.
* ``zero2`` / ``zero3`` run it with a DeepSpeed ZeRO stage 2 / 3 config; `cpu_backend` reports
  gloo instead of "no accelerator" to Accelerate, and DeepSpeed runs on its CPU accelerator
  (``DS_ACCELERATOR=cpu``).
"""

import json
import os
import sys

from adept.config import ProbeConfig
from adept.stage2 import AdeptCallback, AdeptTrainer
from adept.training import TrainConfig


def train_config(workdir: str, out: str, batch: int) -> TrainConfig:
    return TrainConfig(
        model=f"{workdir}/expanded",
        data=[f"{workdir}/domain.txt"],
        output_dir=out,
        probe_data=f"{workdir}/probe.txt",
        block_size=32,
        reestimate_every=2,
        probe=ProbeConfig(max_length=48, batch_size=2),
        training_args={
            "max_steps": 4,
            "per_device_train_batch_size": batch,
            "learning_rate": 5e-3,
            "logging_steps": 1,
            "save_steps": 100,
            "disable_tqdm": True,
            "use_cpu": True,
            "warmup_steps": 1,
            "ddp_timeout": 120,  # a collective mismatch fails in 2 minutes instead of hanging for 30
        },
    )


class Recording(AdeptCallback):
    """Appends this rank's multipliers to ``OUT/multipliers-rank{RANK}.jsonl`` after every estimate."""

    def reestimate(self, model, optimizer, scheduler, step, is_main):
        super().reestimate(model, optimizer, scheduler, step, is_main)
        from torch.distributed.tensor import DTensor

        rank = int(os.environ.get("RANK", "0"))
        sharded = all(isinstance(p, DTensor) or hasattr(p, "ds_tensor") for p in model.parameters())
        with open(os.path.join(self.log_path.parent, f"multipliers-rank{rank}.jsonl"), "a") as handle:
            handle.write(json.dumps({"step": step, "multipliers": self.multipliers, "sharded": sharded}) + "\n")


ZERO2 = {
    "zero_optimization": {"stage": 2},
    "zero_allow_untested_optimizer": True,  # the Trainer's AdamW
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
}
# The final save gathers the partitioned weights (in the model's dtype: fp32 here).
ZERO3 = {**ZERO2, "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}}


def use_cpu_backend_for_deepspeed() -> None:
    """Let Accelerate initialise DeepSpeed over gloo: its backend probe finds no accelerator."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    probe = PartialState._prepare_backend

    def cpu_backend(self, cpu=False, sagemaker_dp=False, backend=None):
        backend, kind = probe(self, cpu, sagemaker_dp, backend)
        if kind in (None, DistributedType.NO) and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return "gloo", DistributedType.MULTI_CPU
        return backend, kind

    PartialState._prepare_backend = cpu_backend


class CpuFsdpTrainer(AdeptTrainer):
    """`AdeptTrainer` with Accelerate's state switched to FSDP on CPU (see the module docstring)."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

        state = self.accelerator.state
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**self.args.fsdp_plugin_args)
        # AcceleratorState copies PartialState's fields whenever it is constructed again.
        PartialState._shared_state["distributed_type"] = state.distributed_type = DistributedType.FSDP
        self.is_fsdp_enabled = True


if __name__ == "__main__":
    import torch.distributed as dist

    import adept.training as training

    workdir, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = sys.argv[4] if len(sys.argv) > 4 else "ddp"
    cfg = train_config(workdir, out, batch)
    if len(sys.argv) > 5:
        cfg.training_args["save_steps"] = int(sys.argv[5])
    cfg.training_args["ddp_backend"] = "gloo"  # only under the launcher: a plain process has no group
    trainer_cls = AdeptTrainer
    if engine == "fsdp2":
        trainer_cls = CpuFsdpTrainer
        cfg.training_args["fsdp"] = True
    elif engine in ("zero2", "zero3"):
        os.environ["DS_ACCELERATOR"] = "cpu"
        use_cpu_backend_for_deepspeed()
        del cfg.training_args["use_cpu"]  # Accelerate never runs DeepSpeed on a `cpu` state
        cfg.training_args["deepspeed"] = ZERO2 if engine == "zero2" else ZERO3
        if engine == "zero3":  # weights are partitioned at load: the copies' step-0 scores come from Stage 1
            cfg.importance = f"{workdir}/importance"
    try:
        training.run_training(cfg, progress=False, adept_callback=Recording, adept_trainer=trainer_cls)
    finally:
        # Without this the launcher's workers linger on the open gloo group at exit.
        if dist.is_initialized():
            dist.destroy_process_group()
    # DeepSpeed keeps its own references to the gloo groups, so their threads outlive
    # destroy_process_group; left to interpreter finalization, their teardown now and then ends
    # in std::terminate (SIGABRT) after a successful run. Everything is written: leave at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
