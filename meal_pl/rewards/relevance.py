"""Offline helpfulness proxy: embedding similarity between the user's request and the response, paid only for
what the response adds (restating the request or repeating itself does not pay)."""

import re

import torch

from meal_pl.rewards.encoder import default_model_path, shared_encoder

__all__ = ["RelevanceReward", "default_model_path", "last_request", "novel_share", "distinct_bigram_share", "without_request_words", "content_words"]

# How restating the request is kept from paying (objective.rewards.helpful.copy_penalty):
#   words: the similarity is taken of the response with the request's content words removed, so it pays only for
#          what the response adds (measured: the request's words shuffled score 0.00 where `pairs` pays them 0.66);
#   pairs: times the share of the response's word pairs not in the request (verbatim restating pays 0; the same
#          words in another order pay in full): the default until the shuffled copy was measured;
#   none:  the raw similarity.
COPY_PENALTIES = ("words", "pairs", "none")

# Preference tags such as `<helpful:0.70>` (meal-pl) or `<rm1_score> 0.5` (RiC) are conditioning, not
# part of the request, and must not move the similarity.
_TAGS = re.compile(r"<[^<>\s]+:[-+]?\d*\.?\d+>|<rm\d+_score>\s*[-+]?\d*\.?\d*")
_WORD = re.compile(r"\w+")


def last_request(prompt: str) -> str:
    """The last human turn of an HH-format prompt ("\\n\\nHuman: ...\\n\\nAssistant:"), without tags."""
    text = prompt.rsplit("Human:", 1)[-1].split("Assistant:", 1)[0]
    return _TAGS.sub(" ", text).strip()


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _grams(words: list[str], n: int) -> list[tuple[str, ...]]:
    """Word n-grams; a text shorter than n words counts as its one n-gram of what it has, an empty one as none."""
    if not words:
        return []
    size = min(n, len(words))
    return [tuple(words[i : i + size]) for i in range(len(words) - size + 1)]


def novel_share(request: str, response: str, n: int = 2) -> float:
    """Share of the response's word n-grams that the request does not contain (1.0 for an answer in its own
    words, 0.0 for the request parroted back); 0.0 for an empty response."""
    grams = _grams(_words(response), n)
    if not grams:
        return 0.0
    seen = set(_grams(_words(request), n))
    return sum(g not in seen for g in grams) / len(grams)


# Function words say nothing of a topic: a response keeps them (an answer's "I" or "the" is not a copy), and one left
# with nothing else adds nothing. Keeping them also leaves a response that copies no content word unchanged, so its
# embedding comes from the shared encoder's cache (the tiny policy's salad mostly; real answers need the extra pass).
FUNCTION_WORDS = frozenset(
    "a about after all also an and any are as at be because been before but by can could did do does doing don for "
    "from had has have having he her here him his how i if in into is it its just me more most my no nor not now of "
    "off on once only or other our out over own s same she should so some such t than that the their them then there "
    "these they this those to too under until up very was we were what when where which while who whom why will with "
    "would you your".split()
)


def content_words(text: str) -> set[str]:
    """The text's lower-cased words that are not function words."""
    return set(_words(text)) - FUNCTION_WORDS


def without_request_words(request: str, response: str) -> str:
    """The response with every content word of the request removed (case-insensitive): what it adds to the request."""
    seen = content_words(request)
    kept = _WORD.sub(lambda m: "" if m.group(0).lower() in seen else m.group(0), response)
    return " ".join(kept.split())


def distinct_bigram_share(response: str) -> float:
    """Distinct word pairs / word pairs: about 1 for prose of any length (words recur, pairs rarely do), low for
    a loop ("I'm I'm I'm I'm": 2 of 7); 0.0 for an empty response."""
    grams = _grams(_words(response), 2)
    return len(set(grams)) / len(grams) if grams else 0.0


class RelevanceReward:
    """cos(e(request), e(response without the request's content words)) of mean-pooled MiniLM embeddings, times the response's
    share of distinct word pairs (both discounts switchable: `copy_penalty`, `repetition_penalty`).

    A cheap, offline stand-in for a helpfulness reward model: an answer about the asked topic scores higher than
    an off-topic one. The raw similarity pays most for restating the question (SmolLM2 drifted into repeating it,
    and into repeating itself, README), so by default both are discounted. Unrelated texts land near 0.
    """

    def __init__(self, model_path: str | None = None, max_length: int = 128, batch_size: int = 64,
                 copy_penalty: str = "words", repetition_penalty: bool = True, encoder_dtype: str = "float32") -> None:
        if copy_penalty not in COPY_PENALTIES:
            raise ValueError(f"objective.rewards.helpful.copy_penalty={copy_penalty!r}; choose one of {COPY_PENALTIES}")
        # The encoder resolves its path now (a missing model fails at config time) and loads weights on first use.
        self.encoder = shared_encoder(model_path, max_length, batch_size, encoder_dtype)
        self.copy_penalty, self.repetition_penalty = copy_penalty, repetition_penalty

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Unit-norm embeddings (len(texts), hidden) from the shared encoder."""
        return self.encoder.embed(texts)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if not completions:
            return []
        requests = [last_request(p) for p in prompts]
        words = self.copy_penalty == "words"
        compared = [without_request_words(r, c) for r, c in zip(requests, completions, strict=True)] if words else list(completions)
        # One call, the completions included: the harm reward model asks for the same texts and finds them cached (a
        # text twice in the call, a completion compared as it is, is encoded once).
        emb = self.embed(requests + list(completions) + compared)
        cos = (emb[: len(requests)] * emb[-len(compared) :]).sum(-1).tolist()
        scores = []
        for c, req, comp, rest in zip(cos, requests, completions, compared, strict=True):
            if words and not content_words(rest):  # the request's words and function words: nothing added
                c = 0.0
            factor = novel_share(req, comp) if self.copy_penalty == "pairs" else 1.0
            factor *= distinct_bigram_share(comp) if self.repetition_penalty else 1.0
            scores.append(c * factor if c > 0 else c)  # a discount must never raise an off-topic score
        return scores
