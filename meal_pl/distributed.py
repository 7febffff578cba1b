"""The few collective operations Meal needs beyond what Lightning's strategies do for it.

DDP averages gradients only for backward passes it sees. Meal's meta step takes gradients functionally
(torch.autograd.grad, torch.func), and the PWN has its own optimiser, so those averages are done here.
Every function is the identity in a single process, so CPU and one-GPU runs are unaffected.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(tensors: list[Tensor]) -> list[Tensor]:
    """Average a list of tensors across processes with one flat all-reduce."""
    size = world_size()
    if size == 1 or not tensors:
        return list(tensors)
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= size
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]


def all_ranks(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only if `flag` holds on every process: a collective step is entered by all ranks or none."""
    if world_size() == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_(tensors: list[Tensor], src: int = 0) -> None:
    """Copy rank `src`'s values into every process's tensors, in place."""
    if world_size() == 1:
        return
    for t in tensors:
        dist.broadcast(t.data, src)


def strategy_kind(strategy: object) -> str:
    """'fsdp', 'deepspeed' or 'other', by class name: deepspeed is an optional dependency."""
    name = type(strategy).__name__.lower()
    return "fsdp" if "fsdp" in name else "deepspeed" if "deepspeed" in name else "other"


def shards_parameters(strategy: object) -> bool:
    """Whether a rank holds only a shard of the policy's weights (FSDP, DeepSpeed ZeRO-3).

    Generation then needs every rank to run the same number of forward passes, each of which
    all-gathers the shards (transformers' `synced_gpus`). ZeRO-2 keeps full weights on every rank.
    """
    kind = strategy_kind(strategy)
    if kind == "fsdp":
        return True
    if kind == "deepspeed":
        config = getattr(strategy, "config", None) or {}
        return (config.get("zero_optimization") or {}).get("stage") == 3
    return False


def all_gather_rows(t: Tensor) -> Tensor:
    """Concatenate every process's (n, ...) tensor along dim 0 (all ranks' rows, rank order)."""
    size = world_size()
    if size == 1:
        return t
    out = [torch.empty_like(t) for _ in range(size)]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def prepare_strategy(strategy, lookahead: str, accumulate_grad_batches: int, replicated: list) -> None:
    """Refuse what a strategy cannot run, and keep the `replicated` modules (PWN, reward statistics) whole."""
    kind = strategy_kind(strategy)
    if kind == "fsdp":
        if lookahead != "alternating":
            raise ValueError(
                f"algorithm.meta.lookahead={lookahead} takes functional fast weights, which FSDP's "
                "sharded flat parameters do not expose; use algorithm.meta.lookahead=alternating with "
                "hardware=fsdp, or hardware=ddp/deepspeed (ZeRO-2 keeps full weights)"
            )
        # The PWN and reward statistics stay whole on every rank; meal_pl.distributed syncs them.
        strategy.kwargs.setdefault("ignored_states", replicated)
    if kind == "deepspeed" and accumulate_grad_batches > 1:
        raise ValueError(
            "algorithm.accumulate_grad_batches>1 is not supported with hardware=deepspeed: set "
            "gradient_accumulation_steps in the DeepSpeed config instead"
        )
