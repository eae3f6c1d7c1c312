"""Process group setup and FSDP2 wrapping.

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the trainer joins a process
group (NCCL on GPU, gloo on CPU) and shards every transformer block and the root with
``fully_shard``; run plainly it trains in one process without a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from trimodal.tokenizers.runtime import resolve_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def pick_device(name: str, local_rank: int) -> torch.device:
    """The project's one device resolver (``auto``/``cpu``/``cuda``), bound to this process's
    local rank on CUDA."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"run.device must be auto, cpu or cuda, got {name!r}")
    device = resolve_device(name)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def on_main(fn):
    """Run ``fn`` on rank 0 and hand its result (or its error) to every rank: a refusal on rank 0
    is raised everywhere, instead of leaving the other ranks waiting in a collective."""
    result, error = None, None
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # re-raised below, on every rank
            error = e
    if dist.is_available() and dist.is_initialized():
        box = [(result, None if error is None else (type(error), str(error)))]
        dist.broadcast_object_list(box, src=0)
        result, err = box[0]
        if err is not None and error is None:
            error = err[0](err[1]) if issubclass(err[0], Exception) else RuntimeError(err[1])
    if error is not None:
        raise error
    return result


def first_error(message: str) -> str:
    """The first non-empty error message of any rank ("" when every rank is fine), so that all
    ranks raise together instead of some waiting forever in the next collective."""
    if dist.is_available() and dist.is_initialized():
        box: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(box, message)
        return next((m for m in box if m), "")
    return message


def shard_model(
    model: nn.Module,
    param_dtype: torch.dtype | None,
    reduce_dtype: torch.dtype = torch.float32,
    activation_checkpointing: str = "none",
    compile: bool = False,
) -> nn.Module:
    """Per-block activation checkpointing / compile, then FSDP2 ``fully_shard`` per block + root.

    With no process group only the checkpointing/compile parts apply. ``param_dtype`` (e.g. bf16)
    is the compute dtype under FSDP's mixed-precision policy; gradients reduce in float32.
    """
    if activation_checkpointing not in ("none", "full", "selective", True, False):
        raise ValueError(f"activation_checkpointing must be none, full or selective, got {activation_checkpointing!r}")
    if activation_checkpointing in ("full", "selective", True):
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

        # selective (layer level, as torchtitan's): every other block recomputes its activations,
        # half the memory saving for half the recompute
        every = 2 if activation_checkpointing == "selective" else 1
        for i, block in enumerate(model.layers):
            if i % every == 0:
                model.layers[i] = checkpoint_wrapper(block)
    if compile:
        for block in model.layers:
            block.compile()  # in place: state-dict keys stay the same
    if dist.is_available() and dist.is_initialized():
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype) if param_dtype else MixedPrecisionPolicy()
        for block in model.layers:
            fully_shard(block, mp_policy=mp)
        # Embeddings, final norm and the per-modality heads live in the root group. FSDP2 never
        # reshards the root after forward, so the objective may call the heads outside forward
        # (only on masked positions) before backward; they stay unsharded until then.
        fully_shard(model, mp_policy=mp)
    return model


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
