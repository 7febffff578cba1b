"""benchmarks/retrieval_ceiling.py: nearest training answers, the best of them per objective."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from retrieval_ceiling import best_by, report, table  # noqa: E402

from meal_pl.retrieval import nearest_store_entries


def test_nearest_ranks_keys_by_cosine():
    keys = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0]]), dim=1)
    assert nearest_store_entries(queries, keys, 2) == [[0, 2], [1, 2]]  # what the benchmark ranks neighbours with


def test_best_by_takes_each_prompts_candidate_highest_on_that_objective():
    scores = torch.tensor([[[0.1, 0.9], [0.5, 0.2]], [[0.3, 0.3], [0.2, 0.8]]])  # [prompts, candidates, objectives]
    assert torch.equal(best_by(scores, 0), torch.stack([scores[0, 1], scores[1, 0]]))
    assert torch.equal(best_by(scores, 1), torch.stack([scores[0, 0], scores[1, 1]]))


def test_report_on_the_default_objective_finds_training_answers_closer_to_the_request_than_random_ones():
    result = report([])
    rows = {r["answer"]: r["all"] for r in result["rows"]}
    assert result["prompts"] == 32 and result["candidates"] == 4
    assert rows["nearest training prompt's answer"][0] > rows["a training answer at random"][0]
    assert rows["best of 4 retrieved, for helpful"][0] >= rows["nearest training prompt's answer"][0]
    assert rows["best of 4 retrieved, for harmless"][1] >= rows["nearest training prompt's answer"][1]
    lines = table(result)
    assert lines[2].startswith("| answer | helpful (all) | harmless (all) | helpful (everyday)")
    assert len(lines) == 4 + len(result["rows"])
