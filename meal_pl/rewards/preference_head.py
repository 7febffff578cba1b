"""A reward model trained from preference pairs (`python -m meal_pl.reward_model`): a head on the shared encoder."""

from __future__ import annotations

from importlib import resources

import torch

from meal_pl.reward_model.head import embed_pairs, load_head
from meal_pl.rewards.encoder import shared_encoder


def default_harm_model_path() -> str:
    """The harm reward model shipped with the package (trained on the shipped HH split's reward-model pairs)."""
    return str(resources.files("meal_pl") / "assets" / "harm_reward_model")


class PreferenceHeadReward:
    """sigmoid((score - mean) / sd): the head's Bradley-Terry score standardised by its training responses' spread,
    in (0, 1), higher = preferred (for the HH harmless pairs: less harmful)."""

    def __init__(self, path: str | None = None, model_path: str | None = None, batch_size: int = 64,
                 encoder_dtype: str = "float32") -> None:
        self.path = path or default_harm_model_path()
        self.head, config = load_head(self.path)
        self.mean, self.std = float(config["score_mean"]), float(config["score_std"])
        # The encoder the head was trained on, unless a local copy of it is named (objective.rewards.<k>.model_path).
        self.encoder = shared_encoder(model_path, int(config["max_length"]), batch_size, encoder_dtype)

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if not completions:
            return []
        scores = self.head(embed_pairs(self.encoder, list(prompts), list(completions))).squeeze(-1)
        return torch.sigmoid((scores - self.mean) / self.std).tolist()
