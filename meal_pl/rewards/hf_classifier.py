"""Any transformers sequence-classification model as a reward (the field's RM setup, e.g. RiC's)."""

import torch

from meal_pl.hub import load_by_name

# (model, device) -> (model, tokenizer): objectives that read different heads of one multi-head reward
# model share a single copy of its weights.
_CACHE: dict[tuple[str, str], tuple[torch.nn.Module, object]] = {}


def prepare_tokenizer(tokenizer) -> None:
    """The padding and truncation a reward model is trained (rm_backend=trl) and scored with."""
    if tokenizer.pad_token is None:
        # GPT-2 style reward models ship without a pad token; batching needs one.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    # Right padding keeps absolute position ids as in training; HF heads pick the last non-pad token.
    tokenizer.padding_side = "right"
    # The answer is at the end of the text: a text over max_length loses the start of its prompt, never the
    # answer being judged (right truncation would score two answers to a long dialogue alike).
    tokenizer.truncation_side = "left"


def end_token(tokenizer) -> str | None:
    """The token TRL's RewardTrainer ends each text with: EOS, or [SEP] for BERT-style tokenizers."""
    return tokenizer.eos_token or tokenizer.sep_token


def reward_texts(template: str, prompts: list[str], completions: list[str], end: str = "") -> list[str]:
    """The texts a classifier scores: the template filled with each pair, then `end` (a trained model's end token)."""
    return [template.format(prompt=p, completion=c) + end for p, c in zip(prompts, completions, strict=True)]


def load_classifier(model: str, device: str = "cpu") -> tuple[torch.nn.Module, object]:
    """Load (or fetch from the cache) an AutoModelForSequenceClassification and its tokenizer; device "auto" loads on
    the CPU a copy of its own, which RewardSet.place moves with the policy (heads of one model share it)."""
    key = (model, device)
    if key in _CACHE:
        return _CACHE[key]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config_key, fix = "objective.rewards.<name>.model", "set the reward's model key to a local directory"
    tokenizer = load_by_name(AutoTokenizer.from_pretrained, config_key, model, fix)
    net = load_by_name(AutoModelForSequenceClassification.from_pretrained, config_key, model, fix)
    prepare_tokenizer(tokenizer)
    net.config.pad_token_id = tokenizer.pad_token_id
    net = net.to("cpu" if device == "auto" else device).eval().requires_grad_(False)
    _CACHE[key] = (net, tokenizer)
    return net, tokenizer


class HFSequenceClassifierReward:
    """Reward = logits[:, output_index] of a sequence classifier on `template.format(prompt, completion)`.

    `output_index` picks one head, so one multi-head model can feed several objectives by config.
    `append_eos` ends each text with the tokenizer's end token, as TRL's RewardTrainer trains
    (`python -m meal_pl.reward_model rm_backend=trl` writes models to be read with it on).
    The model loads at construction, so a bad name fails before the policy is loaded.
    """

    def __init__(
        self,
        model: str,
        output_index: int = 0,
        max_length: int = 512,
        batch_size: int = 16,
        template: str = "{prompt}{completion}",
        device: str = "auto",
        append_eos: bool = False,
    ) -> None:
        self.model_name = model
        self.output_index = output_index
        self.batch_size = batch_size
        self.template = template
        # auto: loaded on the CPU, then placed with the policy (RewardSet.place: the strategy's device on each rank)
        self.follows_policy = device == "auto"
        self.device = "cpu" if self.follows_policy else device
        self.model, self.tokenizer = load_classifier(model, device)
        num_labels = self.model.config.num_labels
        if not -num_labels <= output_index < num_labels:
            raise ValueError(f"output_index={output_index} but {model!r} has {num_labels} output(s)")
        # A text past the model's positions fails at its batch; cut there instead (from the left: the answer stays).
        positions = getattr(self.model.config, "max_position_embeddings", None)
        self.max_length = max_length if positions is None else min(max_length, positions)
        self.end = end_token(self.tokenizer) if append_eos else ""
        if self.end is None:
            raise ValueError(f"append_eos=true but {model!r}'s tokenizer has no eos_token or sep_token; give append_eos=false")

    def place(self, device: torch.device | str) -> None:
        """Move the model to the policy's device (device=auto only; an explicit device stays where it was put)."""
        if self.follows_policy and str(device) != str(self.device):
            self.model.to(device)
            self.device = str(device)

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        texts = reward_texts(self.template, prompts, completions, self.end)
        scores: list[float] = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            logits = self.model(**enc).logits  # (b, num_labels)
            scores.extend(logits[:, self.output_index].float().cpu().tolist())
        return scores
