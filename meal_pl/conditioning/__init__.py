"""How a preference w reaches the policy: one backend per file, chosen by the `conditioning` config group.

Every backend keeps the text tags in the prompt (`tags.py`, RiC-compatible) and adds its own path for w
into the network; `text.py` writes w in ordinary words and digits instead of tag tokens. The interface, on every backend:

- `attach(tokenizer, model)`: add the tag tokens and install the backend's modules inside the model;
- `condition`, `tag_ids`, `format`, `parse`, `quantize`, `weights_from_ids`: the tags;
- `preference(model, weights)`: context manager, the (B,K) preference the network sees in the block;
- `reference(model)` / `snapshot(model)`: the frozen copy pi_ref runs when it shares the policy (LoRA);
- `unfreeze(model)`: the backend's parameters train again after peft froze the base model;
- `merge(model, weights)`: a plain transformers model acting as the conditioned one at one w (export).
"""

from meal_pl.conditioning.embedding import EmbeddingConditioner
from meal_pl.conditioning.svd_lora import SVDLoRAConditioner
from meal_pl.conditioning.tags import TextTagConditioner, check_preference
from meal_pl.conditioning.text import TextPreferenceConditioner
from meal_pl.conditioning.tied_tags import TiedTagConditioner

BACKENDS = {c.name: c for c in (TextTagConditioner, TiedTagConditioner, EmbeddingConditioner, SVDLoRAConditioner,
                                 TextPreferenceConditioner)}

__all__ = [
    "BACKENDS",
    "EmbeddingConditioner",
    "SVDLoRAConditioner",
    "TextPreferenceConditioner",
    "TextTagConditioner",
    "TiedTagConditioner",
    "check_preference",
]
