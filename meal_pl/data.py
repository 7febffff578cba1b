"""Prompt data: HH-format loaders and the datamodule that feeds batches of prompt strings to the policy."""

from __future__ import annotations

import gzip
import json
import os
import warnings
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from meal_pl.hub import hub_offline
from meal_pl.ranges import check_integer

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def split_hh(text: str) -> tuple[str, str]:
    """Split an HH dialogue at its last assistant turn: (prompt ending with the marker, stripped response)."""
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError(f"HH dialogue has no {ASSISTANT!r} marker: {text[:80]!r}")
    cut += len(ASSISTANT)
    return text[:cut], text[cut:].strip()


def _as_prompt(prompt: str | list) -> str:
    """Bring a bare prompt, or TRL's conversational prompt ([{"role": ..., "content": ...}, ...]), into HH form, so
    every prompt ends where the assistant's reply begins (the chat template renders it back: meal_pl/chat.py)."""
    if isinstance(prompt, list):
        return _from_messages(prompt)
    text = prompt.strip()
    if not text.startswith("Human:"):  # HH text starts with "\n\nHuman:", stripped just above
        return f"{HUMAN} {text}{ASSISTANT}"
    text = "\n\n" + text
    return text if text.endswith(ASSISTANT) else text + ASSISTANT


def _from_messages(messages: list) -> str:
    """TRL's conversational format as HH text: user turns as Human, assistant turns as Assistant; a system message has
    no HH turn and is refused rather than silently dropped."""
    turns = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"a conversational prompt is a list of {{'role', 'content'}} messages, got {message!r}")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise ValueError(f"a conversational prompt's roles are user and assistant, got {role!r} (a system message "
                             "has no place in HH-format prompts: put it in the first user turn)")
        turns.append(f"{HUMAN if role == 'user' else ASSISTANT} {message['content'].strip()}")
    if not turns or not turns[-1].startswith(HUMAN):
        raise ValueError("a conversational prompt must end with a user message (the request to answer)")
    return "".join(turns) + ASSISTANT


def _record(obj: Any) -> dict:
    """One {"prompt", "responses"[, "group"]} record from an HH pair or a prompt-only row; ValueError says what is wrong.

    A row may carry an optional "group" string (a prompt family, e.g. "a"/"b" of synthetic_prompted); the
    Pareto report then gives the PWN's weights and the hypervolume per group. The shipped set is hand-labelled
    harmful_request / everyday; harmless-base (all red-team prompts) carries none (see README).
    """
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "chosen" in obj and "rejected" in obj:
        prompt, chosen = split_hh(obj["chosen"])
        rejected_prompt, rejected = split_hh(obj["rejected"])
        # A few real HH rows disagree on the dialogue so far (5 of the 2,312 harmless-base test rows);
        # the rejected side then answers another prompt and is dropped rather than mislabelled.
        responses = [chosen] + ([rejected] if rejected_prompt == prompt else [])
    elif "prompt" in obj:
        prompt = _as_prompt(obj["prompt"])
        response = obj.get("response")
        responses = [response] if isinstance(response, str) else list(response or [])
    else:
        raise ValueError(f"expected keys 'chosen' and 'rejected' (HH pair) or 'prompt', got {sorted(obj)}")
    # Empty replies (4 rows of the real set) would teach the warm start to stop at once.
    record = {"prompt": prompt, "responses": [r.strip() for r in responses if r and r.strip()]}
    group = obj.get("group")
    if group is not None:
        if not isinstance(group, str) or not group:
            raise ValueError(f"'group' must be a non-empty string, got {group!r}")
        record["group"] = group
    return record


def jsonl_rows(path: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) of each non-blank line of a .jsonl or .jsonl.gz file; a line that is not JSON
    raises ValueError naming the file and the line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from e
            yield lineno, row


def load_records(path: str) -> list[dict]:
    """Read HH pairs or prompt-only rows from a .jsonl or .jsonl.gz file into {"prompt", "responses"} records."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"data file not found: {path} (config key data.path; a relative path is relative to the "
            "directory you run from; data.path=null uses the shipped prompt set)"
        )
    records = []
    for lineno, obj in jsonl_rows(path):
        try:
            records.append(_record(obj))
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}, line {lineno}: {e}") from e
    if not records:
        raise ValueError(f"data file is empty: {path} (config key data.path)")
    return records


def hub_rows(name: str, split: str, key: str = "data.hub_name", path_key: str = "data.path",
             data_dir: str | None = None) -> Any:
    """The rows of a hub dataset (or its local cache; `data_dir`: one subset, e.g. HH's harmless-base); a failure
    says how to fix it, naming the config keys."""
    from datasets import load_dataset  # deferred: importing datasets costs ~1 s and is rarely needed

    try:
        return load_dataset(name, data_dir=data_dir, split=split)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        fix = (
            f"you are offline (HF_HUB_OFFLINE=1): set {path_key} to a local .jsonl/.jsonl.gz file, "
            "or run with HF_HUB_OFFLINE=0 and network access"
            if hub_offline()
            else f"check the name and split, or set {path_key} to a local .jsonl/.jsonl.gz file"
        )
        raise RuntimeError(f"could not load {key}={name!r} (split {split!r}): {fix}. Cause: {e}") from e


def load_hub(name: str, split: str, data_dir: str | None = None) -> list[dict]:
    """Load an HH-format dataset from the Hugging Face hub (or its local cache) into records; `data_dir`: one subset
    (HH's harmless-base, helpful-base, ...)."""
    return [_record(row) for row in hub_rows(name, split, data_dir=data_dir)]


# Lightning warns on a mid-epoch resume unless the DataLoader has state_dict(); ResumableSampler takes the
# position from Lightning's own restored counters instead, so the warning does not apply.
warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended")


def balanced_pick(groups: list[str | None], items: list[str], n: int) -> list[str]:
    """The first n items taking the groups in turn (sorted names, each in its given order): a, b, a, b, ...

    So any prefix of the result (the Pareto callback evaluates on the first num_prompts) is balanced to within
    one item; a group that runs out is skipped.
    """
    queues: dict[str | None, list[str]] = {}
    for group, item in zip(groups, items, strict=True):
        queues.setdefault(group, []).append(item)
    names = sorted(queues, key=lambda g: (g is None, g or ""))
    picked: list[str] = []
    depth = 0
    while len(picked) < n and any(depth < len(queues[g]) for g in names):
        picked += [queues[g][depth] for g in names if depth < len(queues[g])][: n - len(picked)]
        depth += 1
    return picked


class ResumableSampler(DistributedSampler):
    """Shuffles by (seed, epoch) alone and starts an epoch after the samples already consumed in it.

    That makes the data position part of what Lightning already checkpoints (epoch and batch counters),
    so a resumed run sees exactly the batches the uninterrupted run would have seen, without torchdata.
    `consumed` is read lazily, when iteration begins: after Lightning has restored its loop counters.
    A DistributedSampler subclass, so Lightning keeps it under DDP instead of wrapping it (one shard per rank).
    """

    def __init__(self, dataset: Any, seed: int, consumed: Callable[[], int], num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.consumed = consumed

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())  # randperm under seed + epoch, this rank's shard
        yield from order[self.consumed() :]


def default_data_path() -> str:
    """Path of the prompt set shipped with the package, so the default run needs no files and no network."""
    return str(resources.files("meal_pl") / "assets" / "hh_default.jsonl")


class PromptDataModule(L.LightningDataModule):
    """Loads prompts once, holds out a fixed seeded evaluation set and serves shuffled batches of prompts."""

    def __init__(
        self,
        path: str | None = None,
        hub_name: str | None = None,
        split: str = "train",
        batch_size: int = 8,
        eval_size: int = 32,
        max_prompts: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        split_seed: int = 0,
        balance_eval_groups: bool = False,
        known_answers: int = 0,
        known_answer_words: int = 25,
        known_answers_self: bool = True,
        data_dir: str | None = None,
    ) -> None:
        super().__init__()
        for key, value, least in (("batch_size", batch_size, 1), ("eval_size", eval_size, 1), ("num_workers", num_workers, 0),
                                  ("known_answers", known_answers, 0), ("known_answer_words", known_answer_words, 1)):
            check_integer(f"data.{key}", value, least)
        if max_prompts is not None:
            check_integer("data.max_prompts", max_prompts, 1, ", or null for every prompt")
        if not isinstance(known_answers_self, bool):
            raise ValueError(f"data.known_answers_self={known_answers_self!r} must be true or false")
        self.known_answers, self.known_answer_words = known_answers, known_answer_words
        self.known_answers_self = known_answers_self
        if path is not None and hub_name is not None:
            raise ValueError(f"set one of data.path ({path!r}) and data.hub_name ({hub_name!r}), not both")
        self.save_hyperparameters(logger=False)  # the run logs its whole config once, with the final metric (meal_pl.sweeps)
        self.path, self.hub_name, self.split, self.data_dir = path, hub_name, split, data_dir
        self.batch_size, self.eval_size, self.max_prompts = batch_size, eval_size, max_prompts
        # The evaluation hold-out has its own seed so runs with different `seed`s are scored on the same prompts.
        self.seed, self.num_workers, self.split_seed = seed, num_workers, split_seed
        # Off by default, so the HH hold-out stays what it always was; synthetic_prompted turns it on.
        self.balance_eval_groups = balance_eval_groups
        self.responses: dict[str, list[str]] = {}  # prompt -> responses, all prompts
        self.groups: dict[str, str] = {}  # prompt -> its group, for prompts whose record names one
        self.train_prompts: list[str] = []
        self._eval_prompts: list[str] = []

    def prepare_data(self) -> None:
        """Load (on rank 0 this also fills the hub cache before other ranks read it)."""
        self._load()

    def setup(self, stage: str | None = None) -> None:
        """Load on every process; a no-op once loaded."""
        self._load()

    def read_records(self) -> list[dict]:
        """The {"prompt", "responses"[, "group"]} records to serve; a subclass may generate them instead."""
        if self.hub_name is not None:
            return load_hub(self.hub_name, self.split, self.data_dir)
        return load_records(self.path or default_data_path())

    def _load(self) -> None:
        if self.responses:
            return
        records = self.read_records()
        # Deduplicate prompts, merging their responses; dict order keeps the file order.
        for rec in records:
            merged = self.responses.setdefault(rec["prompt"], [])
            merged.extend(r for r in rec["responses"] if r not in merged)
            if rec.get("group") is not None:
                self.groups.setdefault(rec["prompt"], rec["group"])
        prompts = list(self.responses)
        if len(prompts) <= self.eval_size:
            raise ValueError(
                f"{len(prompts)} distinct prompts leave none to train on after holding out "
                f"data.eval_size={self.eval_size}"
            )
        order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        shuffled = [prompts[i] for i in order]
        # The evaluation set is taken first, so data.max_prompts (a cap on training prompts) never changes it.
        if self.balance_eval_groups and self.groups:
            self._eval_prompts = balanced_pick([self.groups.get(p) for p in shuffled], shuffled, self.eval_size)
        else:
            self._eval_prompts = shuffled[: self.eval_size]
        held_out = set(self._eval_prompts)
        self.train_prompts = [p for p in shuffled if p not in held_out][: self.max_prompts]
        if len(self.train_prompts) < self.batch_size:
            raise ValueError(
                f"{len(self.train_prompts)} training prompts are fewer than data.batch_size={self.batch_size} "
                "(batches drop the remainder): lower data.batch_size or data.eval_size, or raise data.max_prompts"
            )
        if self.known_answers:
            self._insert_known_answers()

    def _insert_known_answers(self) -> None:
        """Every prompt gets the answers of its nearest training prompts (meal_pl/retrieval.py); keys follow."""
        from meal_pl.retrieval import with_known_answers

        store = [p for p in self.train_prompts if self.responses.get(p)]
        if not store:
            raise ValueError("data.known_answers needs training prompts with responses; set data.known_answers=0")
        new = with_known_answers(self.train_prompts + self._eval_prompts, store, self.responses, self.known_answers,
                                 self.known_answer_words, include_self=self.known_answers_self)
        self.responses = {new.get(p, p): r for p, r in self.responses.items()}
        self.groups = {new.get(p, p): g for p, g in self.groups.items()}
        self.train_prompts = [new[p] for p in self.train_prompts]
        self._eval_prompts = [new[p] for p in self._eval_prompts]

    def train_dataloader(self) -> DataLoader:
        """Seeded shuffled batches; each batch is a list[str] of HH prompts ending with '\\n\\nAssistant:'."""
        self._load()
        trainer = self.trainer
        sampler = ResumableSampler(
            self.train_prompts,
            seed=self.seed,
            consumed=self._consumed,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
        )
        return DataLoader(
            self.train_prompts,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=True,  # fixed batch shapes for the bi-level step
            # Its own generator: the loader's base seed is then never drawn from the global torch RNG.
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=list,  # keep strings: tokenisation belongs to the policy, with its conditioning tags
            num_workers=self.num_workers,
        )

    def _consumed(self) -> int:
        """Samples of the current epoch this rank already trained on: Lightning's restored batch counter.

        Read when the epoch's iteration starts; 0 on a fresh epoch, k * batch_size after resuming at batch k.
        (With num_workers > 0 the first resumed iterator is built before Lightning moves a checkpoint saved on
        an epoch's last batch into the next epoch: exact resume is for num_workers=0, the default.)
        """
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.fit_loop.epoch_loop.batch_progress.current.ready * self.batch_size

    def eval_prompts(self, n: int | None = None) -> list[str]:
        """The fixed held-out prompts (the first n), never trained on; the Pareto evaluation generates on them."""
        self._load()
        return self._eval_prompts[:n]

    def eval_groups(self, n: int | None = None) -> list[str | None]:
        """The group of each of eval_prompts(n), aligned with it; None where the data names no group."""
        return [self.groups.get(p) for p in self.eval_prompts(n)]

    def sft_pairs(self) -> list[tuple[str, str]]:
        """(prompt, response) over training prompts, chosen and rejected alike, for the supervised warm start."""
        self._load()
        return [(p, r) for p in self.train_prompts for r in self.responses[p]]

    def corpus(self) -> list[str]:
        """Training dialogues as plain text (prompt alone when it has no response), to fit a tokenizer on."""
        self._load()
        return [f"{p} {r}" if r else p for p in self.train_prompts for r in self.responses[p] or [""]]
