"""Optional short SFT warm start: teach the policy the data's language and the meaning of the tags.

Each (prompt, response) pair is trained under the tags of the trade-off it achieves (METHOD.md step 5
applied to the data), so the policy is steerable before Meal starts; this is RiC's offline stage.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from transformers import PreTrainedModel

from meal_pl.losses import masked_mean, token_logprobs
from meal_pl.sampling import position_ids


def sft_loss(policy: PreTrainedModel, prefix_ids: Tensor, prefix_mask: Tensor, responses: Tensor, resp_mask: Tensor) -> Tensor:
    """Mean per-token NLL of right-padded responses after left-padded prefixes."""
    ids = torch.cat([prefix_ids, responses], 1)
    mask = torch.cat([prefix_mask, resp_mask.long()], 1)
    out = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=responses.shape[1] + 1)
    logp = token_logprobs(out.logits[:, :-1], responses)
    return masked_mean(-logp, resp_mask).mean()


def warm_start(
    policy: PreTrainedModel,
    batches: list[tuple[Tensor, Tensor, Tensor, Tensor]],
    steps: int,
    lr: float,
    seed: int = 0,
    conditioner=None,
) -> list[float]:
    """Run `steps` AdamW steps over pre-built (prefix_ids, prefix_mask, responses, resp_mask) batches.

    With a `conditioner`, each batch runs under the preference its prefixes' tags say (backends that
    read w beyond the tags need it: meal_pl.conditioning).
    """
    if steps <= 0 or not batches:
        return []
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(seed))
    history = []
    policy.train()
    for step in range(steps):
        batch = [t.to(policy.device) for t in batches[int(order[step % len(batches)])]]
        with (conditioner.preference(policy, conditioner.weights_from_ids(batch[0])) if conditioner is not None
              else contextlib.nullcontext()):
            loss = sft_loss(policy, *batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        history.append(loss.item())
    return history
