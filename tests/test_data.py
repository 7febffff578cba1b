"""Tests for the HH loaders, the shipped prompt set and the prompt datamodule."""

import gzip
import json
import math
import time
from collections import Counter
from pathlib import Path

import pytest

from meal_pl.data import PromptDataModule, default_data_path, load_hub, load_records, split_hh

REAL_HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf/harmless-base/test.jsonl.gz"


def _write(path: Path, rows: list) -> str:
    """Write rows (dicts, or raw strings for malformed lines) as jsonl, gzipped when the name ends in .gz."""
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def _pair(question: str, good: str, bad: str) -> dict:
    return {
        "chosen": f"\n\nHuman: {question}\n\nAssistant: {good}",
        "rejected": f"\n\nHuman: {question}\n\nAssistant: {bad}",
    }


def test_split_hh_single_turn():
    assert split_hh("\n\nHuman: hi\n\nAssistant:  hello there \n") == (
        "\n\nHuman: hi\n\nAssistant:",
        "hello there",
    )


def test_split_hh_takes_last_assistant_turn():
    text = "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant: d"
    assert split_hh(text) == ("\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:", "d")


def test_split_hh_missing_marker():
    with pytest.raises(ValueError, match="Assistant"):
        split_hh("\n\nHuman: no reply here")


@pytest.mark.parametrize("name", ["pairs.jsonl", "pairs.jsonl.gz"])
def test_load_pairs(tmp_path, name):
    path = _write(tmp_path / name, [_pair("q1?", "good", "bad"), _pair("q2?", "yes", "no")])
    records = load_records(path)
    assert records == [
        {"prompt": "\n\nHuman: q1?\n\nAssistant:", "responses": ["good", "bad"]},
        {"prompt": "\n\nHuman: q2?\n\nAssistant:", "responses": ["yes", "no"]},
    ]


def test_load_prompt_only_rows(tmp_path):
    rows = [
        {"prompt": "Name a fruit."},
        {"prompt": "\n\nHuman: Name a colour.\n\nAssistant:", "response": "Blue."},
        {"prompt": "\n\nHuman: Name a tree."},
    ]
    records = load_records(_write(tmp_path / "p.jsonl", rows))
    assert [r["prompt"] for r in records] == [
        "\n\nHuman: Name a fruit.\n\nAssistant:",
        "\n\nHuman: Name a colour.\n\nAssistant:",
        "\n\nHuman: Name a tree.\n\nAssistant:",
    ]
    assert [r["responses"] for r in records] == [[], ["Blue."], []]


def test_malformed_line_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [_pair("q?", "a", "b"), '{"chosen": oops', _pair("r?", "a", "b")])
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_records(path)


def test_wrong_keys_name_file_and_line(tmp_path):
    path = _write(tmp_path / "keys.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match=r"keys\.jsonl, line 1: expected keys 'chosen' and 'rejected'"):
        load_records(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl.*data\.path"):
        load_records(str(tmp_path / "nope.jsonl"))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=r"empty.*empty\.jsonl"):
        load_records(str(path))


def test_shipped_default_set():
    records = load_records(default_data_path())
    prompts = [r["prompt"] for r in records]
    assert len(records) == 240
    assert len(set(prompts)) == 240
    assert all(p.startswith("\n\nHuman: ") and p.endswith("\n\nAssistant:") for p in prompts)
    assert all(len(r["responses"]) == 2 for r in records)


def test_shipped_default_set_groups():
    """Every shipped row is hand-labelled harmful_request/everyday, and the hold-out's groups line up."""
    records = load_records(default_data_path())
    assert all(r.get("group") in ("harmful_request", "everyday") for r in records)
    assert Counter(r["group"] for r in records) == {"everyday": 154, "harmful_request": 86}
    group_of = {r["prompt"]: r["group"] for r in records}
    dm = PromptDataModule(batch_size=4, eval_size=32)  # path None: the shipped set
    dm.setup("fit")
    prompts, groups = dm.eval_prompts(), dm.eval_groups()
    assert len(groups) == 32 and groups == [group_of[p] for p in prompts]
    assert set(groups) == {"harmful_request", "everyday"}
    assert dm.eval_groups(5) == groups[:5] == [group_of[p] for p in dm.eval_prompts(5)]


def _datamodule(tmp_path, seed=0, n=40, **kwargs) -> PromptDataModule:
    path = _write(tmp_path / "dm.jsonl", [_pair(f"question {i}?", f"good {i}", f"bad {i}") for i in range(n)])
    dm = PromptDataModule(path=path, batch_size=4, eval_size=8, seed=seed, **kwargs)
    dm.setup("fit")
    return dm


def test_eval_set_fixed_and_held_out(tmp_path):
    a, b = _datamodule(tmp_path), _datamodule(tmp_path)
    assert a.eval_prompts() == b.eval_prompts()
    assert len(a.eval_prompts()) == 8 and a.eval_prompts(3) == a.eval_prompts()[:3]
    assert not set(a.eval_prompts()) & set(a.train_prompts)
    assert len(a.train_prompts) == 32
    assert {p for p, _ in a.sft_pairs()} == set(a.train_prompts)
    assert len(a.sft_pairs()) == 64 and len(a.corpus()) == 64
    assert a.state_dict() == {}
    # Capping training prompts leaves the evaluation set alone.
    assert _datamodule(tmp_path, max_prompts=10).eval_prompts() == a.eval_prompts()


def test_duplicate_prompts_are_merged(tmp_path):
    rows = [_pair("same?", "a", "b"), _pair("same?", "a", "c")] + [
        _pair(f"q{i}?", "x", "y") for i in range(5)
    ]
    dm = PromptDataModule(path=_write(tmp_path / "d.jsonl", rows), batch_size=2, eval_size=2)
    dm.setup()
    assert len(dm.train_prompts) + len(dm.eval_prompts()) == 6
    assert dm.responses["\n\nHuman: same?\n\nAssistant:"] == ["a", "b", "c"]


def test_batches_are_lists_of_prompt_strings(tmp_path):
    batches = list(_datamodule(tmp_path).train_dataloader())
    assert len(batches) == 8
    for batch in batches:
        assert isinstance(batch, list) and len(batch) == 4
        assert all(isinstance(p, str) and p.endswith("\n\nAssistant:") for p in batch)


def test_shuffle_depends_on_seed(tmp_path):
    def order(dm):
        return [p for batch in dm.train_dataloader() for p in batch]

    assert order(_datamodule(tmp_path, seed=1)) == order(_datamodule(tmp_path, seed=1))
    assert order(_datamodule(tmp_path, seed=1)) != order(_datamodule(tmp_path, seed=2))


def test_too_few_train_prompts(tmp_path):
    with pytest.raises(ValueError, match="fewer than data.batch_size"):
        _datamodule(tmp_path, n=10)


def test_real_hh_loader():
    if not REAL_HH.exists():
        pytest.skip(
            f"real HH-RLHF sample not present at {REAL_HH} (it lives in ../shared beside the project)"
        )
    records = load_records(str(REAL_HH))
    assert len(records) == 2312
    assert all(r["prompt"].endswith("\n\nAssistant:") for r in records)
    assert all(r["responses"] and all(r["responses"]) for r in records)


def test_hub_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"data\.hub_name='Anthropic/hh-rlhf'.*data\.path"):
        load_hub("Anthropic/hh-rlhf", "train")
    assert time.monotonic() - start < 5


def test_max_turns_keeps_red_team_prompts_in_the_everyday_prompts_form():
    from meal_pl.red_team_data import RedTeamDataModule, human_turns

    every = RedTeamDataModule(max_turns=None).read_records()
    single = RedTeamDataModule(max_turns=1).read_records()
    red = [r for r in single if r["group"] == "red_team"]
    assert 0 < len(red) < sum(r["group"] == "red_team" for r in every)
    assert all(human_turns(r["prompt"]) == 1 for r in single)  # the everyday prompts too: one question each
    assert len(single) - len(red) == sum(r["group"] == "everyday" for r in every)
    with pytest.raises(ValueError, match="data.max_turns=0 must be an integer >= 1"):
        RedTeamDataModule(max_turns=0)


def test_trls_conversational_prompts_are_read_as_hh_dialogues(tmp_path):
    from meal_pl.chat import hh_to_messages
    from meal_pl.data import load_records

    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "How do I bake bread?"}]
    path = tmp_path / "conversational.jsonl"
    path.write_text(json.dumps({"prompt": turns, "group": "everyday"}) + "\n")
    (record,) = load_records(str(path))
    assert record["prompt"] == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert hh_to_messages(record["prompt"]) == turns  # the chat template renders the same conversation back
    path.write_text(json.dumps({"prompt": [{"role": "system", "content": "Be brief."}]}) + "\n")
    with pytest.raises(ValueError, match="line 1: a conversational prompt's roles are user and assistant, got 'system'"):
        load_records(str(path))


def test_a_conversational_prompt_file_trains(tiny_cfg, tmp_path):
    from meal_pl.train import train

    path = tmp_path / "conversational.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}]} for i in range(24)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = tiny_cfg("objective=synthetic", "logger=none", "data=default", f"data.path={path}", "data.eval_size=4",
                   "warm_start.steps=0", "trainer.max_steps=2")
    metrics = train(cfg)
    assert math.isfinite(metrics["train/policy_loss"])  # two steps ran
    report = json.loads((Path(cfg.paths.output_dir) / "generations.json").read_text())
    assert "Question number" in json.dumps(report)  # on those prompts


def test_a_hub_dataset_subset_is_passed_to_the_loader(monkeypatch):
    from meal_pl import data

    seen = {}
    monkeypatch.setattr(data, "hub_rows", lambda name, split, data_dir=None: seen.update(data_dir=data_dir) or
                        [{"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go"}])
    module = data.PromptDataModule(hub_name="Anthropic/hh-rlhf", data_dir="harmless-base")
    assert module.read_records()[0]["responses"] == ["Hello", "Go"] and seen == {"data_dir": "harmless-base"}
