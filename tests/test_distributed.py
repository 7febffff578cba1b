"""The meta step under DDP is the single-process meta step on the global batch (2 gloo processes)."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_meta import fixed_batch, meta_gradient_of, micro_module, pwn_gradient

from meal_pl import distributed, losses


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_pwn_gradients(rank: int, world: int, port: int, out: str) -> None:
    """One rank: half of the fixed batch (one prompt, one meta row); rank-averaged PWN gradients to `out`."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = {lookahead: rank_pwn_gradient(rank, lookahead) for lookahead in ("second_order", "first_order")}
        result["gathered"] = distributed.all_gather_rows(torch.tensor([[float(rank)]]))
        result["flags"] = distributed.all_ranks(rank == 0), distributed.all_ranks(True)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def rank_pwn_gradient(rank: int, lookahead: str) -> list[torch.Tensor]:
    """This rank's meta gradient on its half of the batch, then the PWN gradient averaged over ranks."""
    module = micro_module(lookahead)
    features, rewards, inner, meta_rows = fixed_batch(module)
    N = rewards.shape[1]
    rows = slice(rank * N, (rank + 1) * N)
    local = {k: v[rows] for k, v in inner.items()}
    keep = torch.ones(1, N, dtype=torch.bool)
    sel = losses.selection_weights(module.pwn(features[rank : rank + 1]), rewards[rank : rank + 1], keep, module.sampler.tau)
    meta_grad, _ = meta_gradient_of(module, local, [meta_rows[rank]], sel.detach())
    grads = torch.autograd.grad(losses.pwn_meta_loss(sel, meta_grad), list(module.pwn.parameters()))
    return distributed.all_reduce_mean(list(grads))


def test_rank_averaged_meta_gradient_equals_the_global_batch_one(tmp_path):
    out = str(tmp_path / "ranks.pt")
    # fork: the children reuse the imported modules (spawn would re-import transformers in each).
    mp.start_processes(rank_pwn_gradients, args=(2, free_port(), out), nprocs=2, join=True, start_method="fork")
    result = torch.load(out)
    for lookahead in ("second_order", "first_order"):
        module = micro_module(lookahead)
        expected = pwn_gradient(module, *fixed_batch(module))  # one process, both prompts, both meta rows
        assert sum(g.abs().sum() for g in expected) > 0
        for got, want in zip(result[lookahead], expected, strict=True):
            assert torch.allclose(got, want, rtol=1e-6, atol=1e-10), lookahead
    assert result["gathered"].flatten().tolist() == [0.0, 1.0]
    assert result["flags"] == (False, True)  # a collective step is entered by all ranks or none
