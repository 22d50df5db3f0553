# SPDX-License-Identifier: Apache-2.0
"""headpage in a tensor-parallel group: each rank's pool holds its slice of every
layer's KV heads (rank r of s: heads [r H, (r + 1) H), as transformers shards
k_proj), and the ranks' eviction engines agree on one budget through the group.

    import torch.distributed as dist
    dist.init_process_group("gloo")                 # or the engine's own CPU group
    engine = headpage.EvictionEngine(manager, arena)
    engine.join_group(headpage.distributed.ProcessGroupCollective())
    engine.compress(seq, "ada-snapkv", "20%", my_heads_queries, [positions])

Every rank then keeps, for its heads, exactly what one engine over all heads keeps
(Ada-KV's top-k over every layer's heads is agreed in eleven small all-reduces a
compression, whatever its length: docs/eviction.md), and when one rank's call
fails, its bad arguments included, every rank raises. Every rank must make the same calls
in the same order, as transformers' replicated continuous-batching scheduler does.
"""
import torch
import torch.distributed as dist

__all__ = ["ProcessGroupCollective"]


class ProcessGroupCollective:
    """The one operation headpage's group allocators need, an in-place sum of a small
    int64 array across the ranks, over a torch.distributed process group (None:
    the default group). A gloo group sums CPU tensors; another backend (NCCL) sums
    on the current CUDA device. Pass it to EvictionEngine.join_group."""

    def __init__(self, group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("headpage.distributed.ProcessGroupCollective: torch.distributed "
                               "is not initialized (dist.init_process_group first)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        on_cpu = dist.get_backend(group) == "gloo"
        self.device = torch.device("cpu") if on_cpu else torch.device(
            "cuda", torch.cuda.current_device())

    def all_reduce_sum(self, array):
        """Sums `array` (numpy int64, written in place) across the group."""
        values = torch.from_numpy(array)
        if self.device.type == "cpu":
            dist.all_reduce(values, op=dist.ReduceOp.SUM, group=self.group)
            return
        on_device = values.to(self.device)
        dist.all_reduce(on_device, op=dist.ReduceOp.SUM, group=self.group)
        values.copy_(on_device.cpu())

    def __repr__(self):
        return f"ProcessGroupCollective(rank={self.rank}, size={self.size}, device={self.device})"
