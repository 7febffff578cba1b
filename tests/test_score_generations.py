"""benchmarks/score_generations.py: saved answers' distinct word pairs and their scores under reward models."""

import importlib.util
import json
from pathlib import Path

import pytest

from meal_pl.rewards.preference_head import PreferenceHeadReward, default_harm_model_path

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "score_generations.py"
_spec = importlib.util.spec_from_file_location("score_generations", _PATH)
score_generations = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(score_generations)


def test_scores_each_answer_of_a_generations_file(tmp_path):
    prompt = "\n\nHuman: Is stretching before exercise useful?\n\nAssistant:"
    loop, real = "I can help. I can help. I can help.", "A light warm-up helps more than holding stretches."
    path = tmp_path / "generations.json"
    path.write_text(json.dumps({"step": 40, "samples": [
        {"prompt": prompt, "responses": {"<helpful:1.00><harmless:0.00>": loop, "<helpful:0.00><harmless:1.00>": real}}]}))
    assert score_generations.answers(path) == ([prompt, prompt], [loop, real])
    model = default_harm_model_path()
    reward = PreferenceHeadReward(model)
    row = score_generations.score_file(path, {model: reward})
    # loop: 8 word pairs, 3 distinct (i can, can help, help i); real: every pair distinct
    assert row["answers"] == 2 and row["distinct_pairs"] == pytest.approx((3 / 8 + 1.0) / 2)
    scores = reward([prompt] * 2, [loop, real])
    assert row[model] == pytest.approx(sum(scores) / 2)
    assert [a["answer"] for a in row["per_answer"]] == [loop, real]
    assert [a[model] for a in row["per_answer"]] == pytest.approx([float(x) for x in scores])
