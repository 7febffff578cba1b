"""A Bradley-Terry reward head on a frozen sentence encoder: features, the pure loss, training, save and load.

score(x, y) = v . [f(y), e(x) * e(y)] + b, with e the encoder's sentence embedding of the request x (the last human
turn) and of the response y, and f(y) the response's four views (SentenceEncoder.VIEWS: layers 2, 4 and 6
mean-pooled, layer 6 max-pooled). The product term lets the score depend on how the response relates to the request
(a refusal of a harmful request, compliance with it), not only on the response's words.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from meal_pl.rewards.relevance import last_request

CONFIG = "reward_head.json"
WEIGHTS = "reward_head.safetensors"


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, weights: Tensor | None = None) -> Tensor:
    """-mean log sigmoid(s_chosen - s_rejected) over (n,) scores: the pairwise preference likelihood; with (n,)
    `weights`, their weighted mean (a standard negative counts less than a real pair)."""
    loss = -F.logsigmoid(chosen - rejected)
    return loss.mean() if weights is None else (loss * weights).sum() / weights.sum()


def with_negatives(chosen: Tensor, rejected: Tensor, negatives: list[Tensor], negative_weight: float
                   ) -> tuple[Tensor, Tensor, Tensor | None]:
    """(chosen, rejected, weights) of the real pairs (weight 1) followed by (chosen, its corrupted copy) for each
    (n, d) tensor of `negatives` (aligned with `chosen`), all of one pair's negatives weighing `negative_weight`."""
    if not negatives:
        return chosen, rejected, None
    weights = [torch.ones(len(chosen))] + [torch.full((len(chosen),), negative_weight / len(negatives))] * len(negatives)
    return (torch.cat([chosen] * (1 + len(negatives))), torch.cat([rejected, *negatives]), torch.cat(weights))


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> float:
    """Share of pairs whose chosen answer scores strictly higher."""
    return (chosen > rejected).float().mean().item()


def pair_features(request: Tensor, response: Tensor, response_views: Tensor) -> Tensor:
    """[f(y), e(x) * e(y)]: (n, d + h) from (n, h) request and response embeddings and (n, d) response views."""
    return torch.cat([response_views, request * response], dim=-1)


def embed_pairs(encoder, prompts: list[str], responses: list[str]) -> Tensor:
    """Features of responses to HH prompts; each text is encoded once (the encoder caches its views)."""
    requests = [last_request(p) for p in prompts]
    emb = encoder.embed(requests + list(responses))
    n = len(requests)
    return pair_features(emb[:n], emb[n:], encoder.layer_features(list(responses)))


def fit_head(chosen: Tensor, rejected: Tensor, steps: int = 500, lr: float = 1e-2, weight_decay: float = 1e-3,
             seed: int = 0, progress=None, weights: Tensor | None = None) -> torch.nn.Linear:
    """A linear head trained full-batch with Adam on Bradley-Terry over (n, d) chosen / rejected features (each
    pair weighted by (n,) `weights` if given)."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(chosen.shape[1], 1)
    with torch.no_grad():  # seeded init, independent of the global RNG
        head.weight.uniform_(-1.0, 1.0, generator=generator).mul_(chosen.shape[1] ** -0.5)
        head.bias.zero_()
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = bradley_terry_loss(head(chosen).squeeze(-1), head(rejected).squeeze(-1), weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(loss.item())
    return head.eval().requires_grad_(False)


def cross_validate(chosen: Tensor, rejected: Tensor, weight_decays: list[float], folds: int = 5,
                   negatives: list[Tensor] = (), negative_weight: float = 0.0, **fit_kwargs) -> dict[float, float]:
    """{weight decay: mean pairwise accuracy over `folds` interleaved folds of the training pairs}: picks the head's
    regularisation from the training pairs alone, so the held-out pairs stay unseen. A pair's negatives train with
    it; the folds are scored on real pairs only."""
    fold = torch.arange(len(chosen)) % folds
    scores = {}
    for decay in weight_decays:
        accuracies = []
        for f in range(folds):
            keep = fold != f
            c, r, w = with_negatives(chosen[keep], rejected[keep], [n[keep] for n in negatives], negative_weight)
            head = fit_head(c, r, weight_decay=decay, weights=w, **fit_kwargs)
            with torch.no_grad():
                accuracies.append(pairwise_accuracy(head(chosen[fold == f]).squeeze(-1), head(rejected[fold == f]).squeeze(-1)))
        scores[decay] = sum(accuracies) / folds
    return scores


def save_head(out: Path, head: torch.nn.Linear, config: dict) -> None:
    """reward_head.safetensors (weights: no code on load) and reward_head.json (encoder, score scale)."""
    out.mkdir(parents=True, exist_ok=True)
    save_file({"weight": head.weight.detach().contiguous(), "bias": head.bias.detach().contiguous()}, out / WEIGHTS)
    (out / CONFIG).write_text(json.dumps(config, indent=1) + "\n")


def load_head(path: str | Path) -> tuple[torch.nn.Linear, dict]:
    """(head, config) from a directory that save_head wrote; a missing file names the directory and the fix."""
    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise FileNotFoundError(f"{path} is not a reward-head directory (needs {CONFIG} and {WEIGHTS}): "
                                "build one with `python -m meal_pl.reward_model out=DIR`")
    config = json.loads((path / CONFIG).read_text())
    state = load_file(str(path / WEIGHTS))
    head = torch.nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head.eval().requires_grad_(False), config
