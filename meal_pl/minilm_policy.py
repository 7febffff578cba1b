"""A small Llama policy that starts from the sentence encoder's word sense (`model=tiny_minilm`).

The tiny policy learns its words from a few hundred dialogues and writes word salad off the request's topic; the helpful
reward asks for an answer whose MiniLM embedding lies near the request's. This builder gives the policy
all-MiniLM-L6-v2's WordPiece vocabulary and its word embeddings (tied input and output), cut down to the tokens the
corpus uses, so that which words are alike is known before the first step. The transformer blocks train from scratch.
Measured on the default objective (docs/results.md), it writes no more on topic than the tiny policy.
"""

from __future__ import annotations

from collections import Counter

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerFast

from meal_pl.models import small_llama
from meal_pl.rewards.encoder import default_model_path

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[CLS]", "[SEP]"


def corpus_vocabulary(full: dict[str, int], corpus: list[str], token_ids: list[list[int]], min_count: int) -> list[str]:
    """The encoder's tokens the corpus uses at least `min_count` times, plus every character it holds (as a word
    start and as a `##` piece) so that any word of the corpus still splits into known pieces."""
    if not corpus:
        raise ValueError("model=tiny_minilm cuts its vocabulary to the prompt corpus, but the corpus is empty; check data.path")
    by_id = {i: t for t, i in full.items()}
    counts = Counter(i for ids in token_ids for i in ids)
    kept = {by_id[i] for i, n in counts.items() if n >= min_count}
    for char in set("".join(corpus).lower()):
        kept.update(piece for piece in (char, f"##{char}") if piece in full)
    specials = [PAD, UNK, BOS, EOS]
    return specials + sorted(kept - set(specials), key=full.__getitem__)


def cut_tokenizer(vocab: list[str]) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer over `vocab` (lower-cased, no [CLS]/[SEP] added: the policy's text is plain)."""
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS)


def tiny_minilm_llama(
    corpus: list[str] | None = None,
    encoder_path: str | None = None,
    min_count: int = 2,
    num_layers: int = 2,
    num_heads: int = 6,
    intermediate_size: int = 768,
    max_position_embeddings: int = 512,
    attn_implementation: str = "eager",
    init_seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Llama blocks (hidden size 384, MiniLM's) on MiniLM's word embeddings for the corpus's tokens."""
    path = encoder_path or default_model_path()
    full = AutoTokenizer.from_pretrained(path)
    corpus = corpus or []
    ids = full(corpus, add_special_tokens=False, verbose=False)["input_ids"] if corpus else []  # no length warning: not fed to MiniLM
    vocab = corpus_vocabulary(full.get_vocab(), corpus, ids, min_count)
    tokenizer = cut_tokenizer(vocab)
    table = AutoModel.from_pretrained(path).get_input_embeddings().weight.detach()
    rows = table[[full.convert_tokens_to_ids(t) for t in vocab]]
    model = small_llama(tokenizer, table.shape[1], num_layers, num_heads, intermediate_size, max_position_embeddings,
                        attn_implementation, init_seed)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(rows)
    return model, tokenizer
