"""Worker for the FSDP2 test: per-unit rates on a model sharded with ``fully_shard`` (gloo, CPU).

Run as ``torchrun --standalone --nproc_per_node N tests/workers/fsdp_train.py WORKDIR OUT [REPLICAS]``:
FSDP over all N ranks, or with REPLICAS, HSDP on a (REPLICAS, N / REPLICAS) mesh. The test
runs `train` in its own process, unsharded, as the reference. The Trainer only shards on
accelerators, so this loop drives the library's public pieces (`build_param_groups`,
`AdeptCallback`) the way the Trainer does: re-estimate at step 0 and every 2 steps.
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from adept.config import ProbeConfig
from adept.data import load_probe_batches
from adept.stage2 import AdeptCallback
from adept.training import TrainConfig, freeze_all_but, layer_parameter_names, trainable_layers
from adept.tuning import build_param_groups

STEPS, GLOBAL_BATCH, BLOCK = 4, 4, 32


def train(workdir: str, shard: bool, replicas: int = 1) -> dict:
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if shard else (0, 1)
    model = AutoModelForCausalLM.from_pretrained(
        f"{workdir}/expanded", dtype=torch.float32, attn_implementation="eager"
    )
    tokenizer = AutoTokenizer.from_pretrained(f"{workdir}/expanded")
    cfg = TrainConfig(
        model=f"{workdir}/expanded",
        data=[f"{workdir}/domain.txt"],
        output_dir=f"{workdir}/unused",
        probe_data=f"{workdir}/probe.txt",
    )
    layers, _ = trainable_layers(cfg, model)
    trainable = layer_parameter_names(model, layers)
    freeze_all_but(model, trainable)
    if shard:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (replicas, world // replicas), mesh_dim_names=("replicate", "shard"))
        if replicas == 1:
            mesh = mesh["shard"]
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    model.train()

    probe = load_probe_batches(
        f"{workdir}/probe.txt", tokenizer, ProbeConfig(max_tokens=50_000, max_length=48, batch_size=2), seed=0
    )
    optimizer = torch.optim.AdamW(build_param_groups(model, trainable, base_lr=5e-3, weight_decay=0.01))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=STEPS)
    callback = AdeptCallback(probe, reestimate_every=2)
    history = []

    def reestimate(step: int) -> None:
        callback.reestimate(model, optimizer, scheduler, step, rank == 0)
        scores = callback.history[-1]["importance"]
        history.append(
            {
                "step": step,
                "importance": scores,
                "multipliers": callback.multipliers,
                "lr": [group["lr"] for group in optimizer.param_groups],
            }
        )

    # Full blocks (no padding), so each rank's mean loss averaged over ranks is the global mean.
    generator = torch.Generator().manual_seed(0)
    data = torch.randint(0, tokenizer.vocab_size, (STEPS, GLOBAL_BATCH, BLOCK), generator=generator)
    per_rank = GLOBAL_BATCH // world
    reestimate(0)
    losses = []
    for step in range(1, STEPS + 1):
        rows = data[step - 1, rank * per_rank : (rank + 1) * per_rank]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        mean = loss.detach().clone()
        if shard:
            torch.distributed.all_reduce(mean)
            mean /= world
        losses.append(float(mean))
        if callback.due(step, STEPS):
            reestimate(step)

    from torch.distributed.tensor import DTensor

    if shard:  # the final save of `run_training` under FSDP: every rank gathers, rank 0 writes
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state_dict = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            model.save_pretrained(f"{workdir}/fsdp/model", state_dict=state_dict)
    params = dict(model.named_parameters())
    local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params.values())
    weights = {
        name: (params[name].full_tensor() if isinstance(params[name], DTensor) else params[name]).detach()
        for name in trainable
    }
    return {
        "history": history,
        "losses": losses,
        "weights": weights,
        "all_dtensor": all(isinstance(p, DTensor) for p in params.values()),
        "local_numel": local,
        "full_numel": sum(p.numel() for p in params.values()),
    }


if __name__ == "__main__":
    workdir, out = sys.argv[1], sys.argv[2]
    replicas = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    torch.distributed.init_process_group("gloo")
    try:
        result = train(workdir, shard=True, replicas=replicas)
        rank = torch.distributed.get_rank()
        weights = result.pop("weights")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
            json.dump(result, handle)
        if rank == 0:
            torch.save(weights, os.path.join(out, "weights.pt"))
    finally:
        torch.distributed.destroy_process_group()
