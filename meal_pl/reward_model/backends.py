"""Reward-model backends: each fits on training pairs, scores held-out pairs and writes a directory a reward loads.

- HeadBackend (default, CPU minutes): a Bradley-Terry linear head on a frozen sentence encoder (MiniLM from the
  offline wheel); loaded by `meal_pl.rewards.preference_head.PreferenceHeadReward`.
- TRLBackend (GPU, the field's tool): full fine-tuning of a sequence classifier with TRL's RewardTrainer; writes an
  AutoModelForSequenceClassification directory that `meal_pl.rewards.hf_classifier` loads. Needs `pip install trl`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from rich.progress import Progress

from meal_pl.hub import load_by_name
from meal_pl.ranges import check_integer, check_number
from meal_pl.reward_model.head import (
    cross_validate,
    embed_pairs,
    fit_head,
    pairwise_accuracy,
    save_head,
    with_negatives,
)
from meal_pl.reward_model.negatives import NEGATIVES, corrupt
from meal_pl.reward_model.pairs import Pair
from meal_pl.rewards.encoder import SentenceEncoder
from meal_pl.rewards.hf_classifier import (
    HFSequenceClassifierReward,
    end_token,
    prepare_tokenizer,
    reward_texts,
)


class HeadBackend:
    """Embed every pair once (frozen encoder), fit the head full-batch, score the held-out pairs.

    `negatives` (kinds of meal_pl/reward_model/negatives.py) adds, per training pair, (chosen, a corrupted copy of
    it) pairs weighing `negative_weight` in all; the held-out pairs' chosen answers are always scored against each
    kind, so metrics.json says whether the model ranks a real answer above a loop, a cut or a shuffle of it.
    """

    reward_target = "meal_pl.rewards.preference_head.PreferenceHeadReward"

    def __init__(self, encoder_path: str | None = None, max_length: int = 128, batch_size: int = 64,
                 steps: int = 500, lr: float = 1e-2, weight_decay: float | list[float] = 1e-3, folds: int = 5,
                 seed: int = 0, negatives: list[str] = (), negative_weight: float = 0.1) -> None:
        decays = [weight_decay] if isinstance(weight_decay, (int, float)) else list(weight_decay)  # a ListConfig too
        for key, value, least in (("steps", steps, 1), ("folds", folds, 2), ("max_length", max_length, 1), ("batch_size", batch_size, 1)):
            check_integer(f"rm_backend.{key}", value, least)
        check_number("rm_backend.lr", lr, strict=True)
        check_number("rm_backend.negative_weight", negative_weight, strict=True)
        if not decays or any(not isinstance(d, (int, float)) or isinstance(d, bool) or not d >= 0 for d in decays):
            raise ValueError(f"rm_backend.weight_decay={weight_decay} must be a number >= 0, or a non-empty list of them to "
                             "choose from by cross-validation")
        negatives = list(negatives)
        if any(k not in NEGATIVES for k in negatives) or len(set(negatives)) < len(negatives):
            raise ValueError(f"rm_backend.negatives={negatives} must be distinct kinds of {list(NEGATIVES)}")
        self.negatives, self.negative_weight = negatives, float(negative_weight)
        self.weight_decays, self.folds = [float(d) for d in decays], folds
        # No cache across calls: a request is encoded with its chunk's chosen and again with its rejected answers.
        # Caching it moves the head's weights by 3e-4 (padding differs), and the shipped head must stay exactly what
        # this command writes; the repeat costs seconds.
        self.encoder = SentenceEncoder(encoder_path, max_length, batch_size, cache_size=0)
        self.max_length, self.batch_size = max_length, batch_size
        self.steps, self.lr, self.seed = steps, lr, seed

    def _features(self, pairs: list[Pair], responses: list[str], progress: Progress, label: str) -> torch.Tensor:
        """Features of each pair's request with `responses` (one per pair), in chunks of the batch size."""
        task = progress.add_task(f"embedding {label}", total=len(pairs))
        chunks = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i : i + self.batch_size]
            chunks.append(embed_pairs(self.encoder, [p.prompt for p in chunk], responses[i : i + self.batch_size]))
            progress.advance(task, len(chunk))
        return torch.cat(chunks) if chunks else torch.zeros(0)

    def _pair_features(self, pairs: list[Pair], kinds: list[str], progress: Progress, label: str) -> dict[str, torch.Tensor]:
        """{"chosen", "rejected", and each negative kind of `kinds`: features aligned with `pairs`}."""
        chosen = [p.chosen for p in pairs]
        texts = {"chosen": chosen, "rejected": [p.rejected for p in pairs]}
        texts |= {kind: corrupt(chosen, kind, self.seed) for kind in kinds}
        return {name: self._features(pairs, t, progress, f"{label} {name}") for name, t in texts.items()}

    def fit(self, train: list[Pair], held_out: list[Pair], out: Path) -> dict:
        """Train, evaluate and write reward_head.{safetensors,json}; returns the metrics."""
        with Progress(transient=False) as progress:
            train_features = self._pair_features(train, self.negatives, progress, "training")
            test = self._pair_features(held_out, list(NEGATIVES), progress, "held-out")
            train_c, train_r = train_features["chosen"], train_features["rejected"]
            negatives = [train_features[kind] for kind in self.negatives]
            fit = {"steps": self.steps, "lr": self.lr, "seed": self.seed}
            cv = {}
            if len(self.weight_decays) > 1:  # the regularisation, chosen on the training pairs alone
                task = progress.add_task(f"{self.folds}-fold cross-validation", total=len(self.weight_decays))
                for decay in self.weight_decays:
                    cv |= cross_validate(train_c, train_r, [decay], self.folds, negatives, self.negative_weight, **fit)
                    progress.advance(task)
            decay = max(cv, key=cv.get) if cv else self.weight_decays[0]
            task = progress.add_task("fitting the head", total=self.steps)
            c, r, w = with_negatives(train_c, train_r, negatives, self.negative_weight)
            head = fit_head(c, r, weight_decay=decay, weights=w, progress=lambda loss: progress.advance(task), **fit)
        with torch.no_grad():
            train_scores = {name: head(x).squeeze(-1) for name, x in (("chosen", train_c), ("rejected", train_r))}
            test_scores = {name: head(x).squeeze(-1) for name, x in test.items()} if held_out else {}
        metrics = {"train_accuracy": pairwise_accuracy(train_scores["chosen"], train_scores["rejected"]),
                   "held_out_accuracy": pairwise_accuracy(test_scores["chosen"], test_scores["rejected"])
                   if held_out else None,
                   # the real answer above its corrupted copy, per kind (trained on or not)
                   "held_out_negative_accuracy": {kind: pairwise_accuracy(test_scores["chosen"], test_scores[kind])
                                                  for kind in NEGATIVES} if held_out else None}
        every_train_score = torch.cat([train_scores["chosen"], train_scores["rejected"]])
        save_head(out, head, {
            "encoder": "all-MiniLM-L6-v2", "features": "[views(response), e(request) * e(response)] (meal_pl/reward_model/head.py)",
            "max_length": self.max_length, "negatives": self.negatives, "negative_weight": self.negative_weight,
            # The reward standardises the score by its training responses' spread before the sigmoid.
            "score_mean": every_train_score.mean().item(), "score_std": every_train_score.std().item(),
        })
        return metrics | {"backend": "head", "reward_target": self.reward_target,
                          "cross_validation": {str(k): v for k, v in cv.items()},
                          "settings": {"steps": self.steps, "lr": self.lr, "weight_decay": decay,
                                       "max_length": self.max_length, "seed": self.seed, "negatives": self.negatives,
                                       "negative_weight": self.negative_weight}}

    def reward_overrides(self, out: Path) -> list[str]:
        """Train's override that points objective.rewards.harmless at this model."""
        return [f"objective.rewards.harmless.path={out}"]


class TRLBackend:
    """TRL RewardTrainer on `model` (a hub name or a local directory), then its held-out pairwise accuracy.

    The pairs are tokenized here exactly as the written reward reads them (HFSequenceClassifierReward with
    append_eos: the prompt, the answer, the end token; a text over max_length loses the start of its prompt) and
    handed to TRL tokenized, since TRL drops every pair over max_length, and HH dialogues run long.
    """

    reward_target = "meal_pl.rewards.hf_classifier.HFSequenceClassifierReward"
    template = "{prompt} {completion}"  # an HH request ends "Assistant:", its answers and a policy's start bare

    def __init__(self, model: str, epochs: float = 1.0, lr: float = 1e-5, batch_size: int = 8, max_length: int = 512,
                 seed: int = 0, bf16: bool = False) -> None:
        check_integer("rm_backend.batch_size", batch_size, 1)
        check_integer("rm_backend.max_length", max_length, 2)
        check_number("rm_backend.epochs", epochs, strict=True)
        check_number("rm_backend.lr", lr, strict=True)
        self.model, self.epochs, self.lr, self.batch_size = model, epochs, lr, batch_size
        self.max_length, self.seed, self.bf16 = max_length, seed, bf16

    def _ids(self, tokenizer, pairs: list[Pair], answer: str, end: str) -> list[list[int]]:
        texts = reward_texts(self.template, [p.prompt for p in pairs], [getattr(p, answer) for p in pairs], end)
        return tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def fit(self, train: list[Pair], held_out: list[Pair], out: Path) -> dict:
        try:
            from trl import RewardConfig, RewardTrainer
        except ImportError as e:
            raise RuntimeError("rm_backend=trl needs TRL: pip install 'meal-pl[bench]' (or pip install trl)") from e
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        fix = "set rm_backend.model to a local directory"
        tokenizer = load_by_name(AutoTokenizer.from_pretrained, "rm_backend.model", self.model, fix)
        prepare_tokenizer(tokenizer)
        end = end_token(tokenizer)
        if end is None:
            raise ValueError(f"rm_backend.model={self.model}: its tokenizer has no eos_token or sep_token to end each "
                             "text with (TRL's RewardTrainer reads the score there); give a model whose tokenizer has one")
        net = load_by_name(lambda n: AutoModelForSequenceClassification.from_pretrained(n, num_labels=1),
                           "rm_backend.model", self.model, fix)
        net.config.pad_token_id = tokenizer.pad_token_id
        positions = getattr(net.config, "max_position_embeddings", None)
        if positions is not None and self.max_length > positions:
            raise ValueError(f"rm_backend.max_length={self.max_length} is over the {positions} positions of "
                             f"rm_backend.model={self.model}; give rm_backend.max_length={positions} or less")
        chosen, rejected = self._ids(tokenizer, train, "chosen", end), self._ids(tokenizer, train, "rejected", end)
        rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(chosen, rejected, strict=True)]
        with tempfile.TemporaryDirectory() as scratch:  # the Trainer's own output dir; out gets the model alone
            args = RewardConfig(output_dir=scratch, num_train_epochs=self.epochs, learning_rate=self.lr,
                                per_device_train_batch_size=self.batch_size, max_length=self.max_length,
                                seed=self.seed, bf16=self.bf16, report_to=[], save_strategy="no", logging_steps=10,
                                use_cpu=not torch.cuda.is_available())  # bf16 on a CPU's bf16 units too
            trainer = RewardTrainer(model=net, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
            trainer.train()
        trainer.save_model(str(out))
        tokenizer.save_pretrained(str(out))
        (out / "training_args.bin").unlink(missing_ok=True)  # a pickle: the directory loads with no code run
        reward = HFSequenceClassifierReward(str(out), max_length=self.max_length, template=self.template,
                                            append_eos=True, device="cuda" if torch.cuda.is_available() else "cpu")
        prompts = [p.prompt for p in held_out]
        test_chosen = torch.tensor(reward(prompts, [p.chosen for p in held_out]))
        test_rejected = torch.tensor(reward(prompts, [p.rejected for p in held_out]))
        return {"backend": "trl", "reward_target": self.reward_target, "train_accuracy": None,
                "held_out_accuracy": pairwise_accuracy(test_chosen, test_rejected) if held_out else None,
                # texts at max_length: cut there (their prompt's start dropped) or exactly that long; every pair is trained on
                "train_pairs_at_max_length": sum(max(len(c), len(r)) >= self.max_length for c, r in zip(chosen, rejected)),
                "settings": {"model": self.model, "epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size,
                             "max_length": self.max_length, "seed": self.seed, "bf16": self.bf16}}

    def reward_overrides(self, out: Path) -> list[str]:
        """Train's overrides that swap objective.rewards.harmless for this model (raw logits: a loose -5 bound)."""
        reward = (f"{{_target_: {self.reward_target}, model: {out}, max_length: {self.max_length}, "
                  f'template: "{self.template}", append_eos: true}}')
        return ["'~objective.rewards.harmless'", f"'+objective.rewards.harmless={reward}'",
                "'objective.reference_point=[-0.1,-5.0]'"]
