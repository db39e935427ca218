"""Distributed training engines: what the importance probe needs to know about sharded parameters.

Under DDP and DeepSpeed ZeRO 1-2 every rank holds full tensors and scores its own share of the
probe batches; under FSDP2 (DTensor shards) and ZeRO-3 (partitions) every rank scores all batches
on its own shard and the per-tensor sums are added over the shards. The helpers here take a
rank's shard, its gradient and the sums across ranks, and refuse FSDP1, which leaves no
per-tensor units. Used by `adept.importance` (Stage 1 and its re-estimation in Stage 2) and by
the training runner. Also joins the process group of an `adept run` started by torchrun or
``accelerate launch``, so rank 0 can run the single-process stages while the others wait. Reads
and writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta

import torch
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor


def is_zero3(param: nn.Parameter) -> bool:
    """A parameter partitioned by DeepSpeed ZeRO stage 3 (its data is empty outside forward)."""
    return hasattr(param, "ds_tensor")


def full_numel(param: nn.Parameter) -> int:
    """Elements of the whole tensor, also for a ZeRO-3 partition (whose data is empty)."""
    return param.ds_numel if is_zero3(param) else param.numel()


def is_sharded(params: Sequence[nn.Parameter]) -> bool:
    """Whether ``params`` are sharded (FSDP2 DTensors, DeepSpeed ZeRO-3 partitions), not full replicas."""
    return any(isinstance(p, DTensor) or is_zero3(p) for p in params)


def probe_share(batches: Sequence[dict], params: Sequence[nn.Parameter]) -> list[dict]:
    """The probe batches this rank scores.

    With replicated parameters (one process, DDP, ZeRO 1-2) each rank takes every ``world``-th
    batch and the sums are added over ranks. With sharded parameters the forward and backward are
    collectives (parameter all-gathers), so every rank must run the same batches in the same
    order: each rank scores all of them and contributes its own shard of every tensor.
    """
    if not dist_ready() or is_sharded(params):
        return list(batches)
    return list(batches)[torch.distributed.get_rank() :: torch.distributed.get_world_size()]


def shard_of(param: nn.Parameter):
    """This rank's elements of ``param`` and a function cutting the same elements from its gradient.

    DTensor (FSDP2): the local shard; the gradient is a DTensor sharded alike. ZeRO-3: the rank's
    slice ``ds_tensor`` of the flattened tensor; the gradient, taken with `torch.autograd.grad`,
    is full-size and cut to the same slice. Replicated: everything.
    """
    if isinstance(param, DTensor):
        return param.to_local(), lambda grad: grad.to_local()
    if is_zero3(param):
        size = param.ds_tensor.numel()
        start = torch.distributed.get_rank(group=param.ds_process_group) * size
        count = max(0, min(size, param.ds_numel - start))
        return param.ds_tensor.view(-1)[:count], lambda grad: grad.reshape(-1)[start : start + count]
    return param, lambda grad: grad


def _shard_groups(param: nn.Parameter) -> list:
    """The process groups over which ``param``'s per-shard sums must be added (none if replicated).

    Only mesh dimensions along which a DTensor is sharded count: the replicas of HSDP already hold
    the full sums of their shard.
    """
    if isinstance(param, DTensor):
        return [param.device_mesh.get_group(d) for d, placement in enumerate(param.placements) if placement.is_shard()]
    if is_zero3(param):
        return [param.ds_process_group]
    return []


def sum_over_shards(values: torch.Tensor, params: Sequence[nn.Parameter]) -> torch.Tensor:
    """Add up per-tensor sums over the ranks that hold disjoint shards of each tensor.

    One all-reduce per distinct set of groups; their order follows ``params``, so it is the same
    on every rank.
    """
    layouts: dict[tuple, list[int]] = {}
    groups: dict[tuple, list] = {}
    for index, param in enumerate(params):
        param_groups = _shard_groups(param)
        if param_groups:
            key = tuple(id(group) for group in param_groups)
            layouts.setdefault(key, []).append(index)
            groups[key] = param_groups
    values = values.clone()
    for key, indices in layouts.items():
        part = values[indices]
        for group in groups[key]:
            torch.distributed.all_reduce(part, group=group)
        values[indices] = part
    return values


def probe_gradients(loss: torch.Tensor, params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    """d loss / d params, without disturbing the training engine.

    `torch.autograd.grad` returns the gradients without accumulating into ``.grad``, so the
    gradient hooks of DDP and DeepSpeed ZeRO (which reduce whatever reaches ``.grad``) never see
    the probe; under ZeRO-3 it returns full-size gradients (`shard_of` keeps this rank's slice).
    FSDP2 parameters only get their gradient from FSDP's own reduce-scatter, so they take a plain
    backward, and their ``.grad`` is cleared again before the next batch.
    """
    if any(isinstance(p, DTensor) for p in params):
        loss.backward()
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        return grads
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [
        torch.zeros(p.ds_shape if is_zero3(p) else p.shape, dtype=p.dtype, device=p.device) if g is None else g
        for g, p in zip(grads, params)
    ]


def dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def check_engine(model) -> None:
    """Refuse the engines under which the probe cannot read per-unit gradients.

    DDP, FSDP2 and DeepSpeed ZeRO 1-3 are supported. FSDP1 flattens a module's tensors into one
    parameter, so there are no units to score.
    """
    if any(isinstance(module, FullyShardedDataParallel) for module in model.modules()):
        raise ValueError(
            'dynamic per-unit rates need FSDP2: set "version": 2 in fsdp_config '
            "(FSDP1 flattens each wrapped module's tensors, so there are no units to score)"
        )


# --- `adept run` under torchrun / accelerate launch -------------------------------------------

# Rank 0 runs the single-process stages (importance, expansion, evaluation, report) while the other
# ranks wait; an evaluation of a large model can take hours, longer than a collective's default
# timeout, so the waiting happens on a CPU (gloo) group of its own with a long timeout.
WAIT_TIMEOUT = timedelta(hours=48)
_wait_group = None


def launched_world_size() -> int:
    """Processes started by torchrun or ``accelerate launch`` (their ``WORLD_SIZE``); 1 otherwise."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_launched_processes(device: str) -> None:
    """Join the process group a launcher described in the environment, once, before any stage runs.

    NCCL on GPUs (each rank on its ``LOCAL_RANK`` device), gloo on CPUs. The Trainer (through
    Accelerate) finds the group already there and uses it. A second gloo group with a long
    timeout carries the waits of `wait_for_main`.
    """
    global _wait_group
    if launched_world_size() < 2 or _wait_group is not None:
        return
    if not dist_ready():
        on_gpu = torch.cuda.is_available() and device != "cpu"
        if on_gpu:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend="nccl" if on_gpu else "gloo")
    _wait_group = torch.distributed.new_group(backend="gloo", timeout=WAIT_TIMEOUT)


def is_main_process() -> bool:
    """Rank 0 of a launched group, or the only process."""
    return not dist_ready() or torch.distributed.get_rank() == 0


def wait_for_main() -> None:
    """Every rank waits here until all have arrived (rank 0 arrives when its stage is done)."""
    if dist_ready():
        torch.distributed.barrier(group=_wait_group)


def leave_launched_processes() -> None:
    """Close the process group (a launcher waits forever for ranks that keep theirs open)."""
    global _wait_group
    if dist_ready():
        torch.distributed.destroy_process_group()
    _wait_group = None
