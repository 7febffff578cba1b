"""Reward models trained from preference pairs: `python -m meal_pl.reward_model` (conf/reward_model.yaml)."""
