"""The process group of a ``torchrun`` launch, and the few collective operations training needs.

Under ``torchrun --nproc_per_node=N`` the environment holds ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
without it the world is one plain process and every operation here is the identity.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class Distributed:
    """The process group of a torchrun launch (world 1 = a plain process)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    started: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the process that reports progress and writes checkpoints and the model."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        """The process group torchrun describes in the environment."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        return cls(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))

    def start(self, device: torch.device) -> None:
        """Join the process group: nccl on CUDA, gloo on the CPU."""
        import torch.distributed as dist

        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.started = True

    def stop(self) -> None:
        """Leave the process group this object joined."""
        import torch.distributed as dist

        if self.started and dist.is_initialized():
            dist.destroy_process_group()
            self.started = False

    def any(self, flags: list[bool], device: torch.device) -> list[bool]:
        """Each flag ORed over all ranks (so every rank takes the same decision)."""
        if self.world <= 1:
            return flags
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(value > 0.5) for value in tensor.tolist()]

    def mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over all ranks."""
        if self.world <= 1:
            return value
        import torch
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if self.world <= 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
