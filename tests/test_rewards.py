"""Reward backends, the reward set, the running normaliser and the objective configs."""

import math
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_train
from hydra.utils import instantiate

from meal_pl.rewards import RewardSet, RunningRewardNorm, hf_classifier
from meal_pl.rewards.callable import LengthReward, PythonReward
from meal_pl.rewards.hf_classifier import HFSequenceClassifierReward
from meal_pl.rewards.profanity import HarmlessReward
from meal_pl.rewards.relevance import RelevanceReward, last_request
from meal_pl.rewards.synthetic import WordShareReward

OBJECTIVES = sorted((Path(__file__).parents[1] / "conf" / "objective").glob("*.yaml"))
PROMPT = "\n\nHuman: hi\n\nAssistant:"


def test_word_share_hand_computed():
    r = WordShareReward("abc", min_words=2)
    # "apple Banana cherry zebra": a, B->b, c hit; z misses -> 3 / max(4, 2)
    assert r([PROMPT], ["apple Banana cherry zebra"]) == [0.75]
    assert r([PROMPT], [""]) == [0.0]
    # min_words: one matching word cannot reach 1 when min_words = 8
    assert WordShareReward("abc", min_words=8)([PROMPT], ["apple"]) == [1 / 8]
    assert WordShareReward("abc", min_words=1)([PROMPT], ["apple"]) == [1.0]


def test_word_share_disjoint_groups_sum_to_at_most_one():
    a, b = WordShareReward("abcdefghijklm"), WordShareReward("nopqrstuvwxyz")
    texts = ["all big cats nap on soft pillows 42 times", "zoo", "a b c d e f g h n o"]
    for x, y in zip(a([""] * 3, texts), b([""] * 3, texts), strict=True):
        assert 0.0 <= x + y <= 1.0
    assert a([""], ["a b c d n o p q"])[0] + b([""], ["a b c d n o p q"])[0] == 1.0


def test_harmless_clean_above_insult():
    clean, insult = HarmlessReward()(
        [PROMPT] * 2, ["Thank you, have a lovely day.", "Shut up, you stupid idiot."]
    )
    assert 0.0 <= insult < clean <= 1.0
    assert 0.0 <= HarmlessReward()([PROMPT], [""])[0] <= 1.0
    assert HarmlessReward()([], []) == []


@pytest.fixture(scope="module")
def relevance():
    return RelevanceReward()


def test_relevance_on_topic_above_off_topic(relevance):
    prompt = "\n\nHuman: Hello\n\nAssistant: Hi!\n\nHuman: How do I bake bread at home?\n\nAssistant:"
    assert last_request(prompt) == "How do I bake bread at home?"
    assert last_request("\n\nHuman: bake bread <helpful:0.70><harmless:0.30>\n\nAssistant:") == "bake bread"
    on, off = relevance(
        [prompt, prompt],
        [
            "Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven.",
            "The stock market closed lower today after the central bank's announcement.",
        ],
    )
    assert -1.0 <= off < on <= 1.0


def _tiny_classifier(path: Path) -> str:
    """A randomly initialised 2-head BERT classifier and a word-level tokenizer, built with no files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = ["Human: hi Assistant: hello there", "how do I bake bread", "you are kind and helpful"]
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _tiny_classifier(tmp_path_factory.mktemp("tiny_rm"))


def test_hf_classifier_heads_shape_and_cache(tiny_model):
    hf_classifier._CACHE.clear()
    head0 = HFSequenceClassifierReward(tiny_model, output_index=0, batch_size=2)
    head1 = HFSequenceClassifierReward(tiny_model, output_index=1, batch_size=2)
    assert head0.model is head1.model and len(hf_classifier._CACHE) == 1  # one multi-head model, loaded once
    prompts = [PROMPT] * 3
    completions = ["hello there", "how do I bake bread", "you are kind"]
    r0, r1 = head0(prompts, completions), head1(prompts, completions)
    assert len(r0) == len(r1) == 3 and all(math.isfinite(v) for v in r0 + r1)
    assert r0 != r1
    # batching and padding do not change a score
    assert head0(prompts[:1], completions[:1])[0] == pytest.approx(r0[0], abs=1e-5)
    with pytest.raises(ValueError, match="output_index"):
        HFSequenceClassifierReward(tiny_model, output_index=2)


def test_hf_classifier_reads_the_answer_of_a_text_over_max_length(tiny_model):
    """A long dialogue loses the start of its prompt, never the answer being judged."""
    reward = HFSequenceClassifierReward(tiny_model, max_length=8)
    prompt = "how do I bake bread " * 10  # 50 words, over max_length
    a, b = reward([prompt] * 2, ["hello there", "you are kind"])
    assert a != b


def test_hf_classifier_append_eos_needs_an_end_token(tiny_model):
    with pytest.raises(ValueError, match="append_eos=true but .* has no eos_token or sep_token; give append_eos=false"):
        HFSequenceClassifierReward(tiny_model, append_eos=True)


def test_hf_classifier_cuts_texts_at_the_models_positions(tiny_model):
    """max_length (512 by default) over the model's 64 positions: a long text is cut there, not an error."""
    reward = HFSequenceClassifierReward(tiny_model)
    assert reward.max_length == 64
    a, b = reward(["how do I bake bread " * 30] * 2, ["hello there", "you are kind"])  # 150 words
    assert math.isfinite(a) and a != b


def test_hf_classifier_offline_hub_name_fails_fast():
    name = "meal-pl-test/no-such-reward-model"
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=name) as err:
        HFSequenceClassifierReward(name)
    assert time.perf_counter() - start < 5.0
    assert "local directory" in str(err.value) and "HF_HUB_OFFLINE=0" in str(err.value)


def test_reward_models_follow_the_policys_device_unless_placed_by_hand(tiny_model):
    # device: auto (the default) moves with RewardSet.place, as MealModule.setup places it on the strategy's device
    following, pinned = HFSequenceClassifierReward(tiny_model), HFSequenceClassifierReward(tiny_model, device="cpu")
    RewardSet({"a": following, "b": pinned}).place(torch.device("meta"))
    assert following.device == "meta" and next(following.model.parameters()).device.type == "meta"
    assert pinned.device == "cpu" and next(pinned.model.parameters()).device.type == "cpu"


def test_python_reward_dotted_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shout(prompts, completions, bonus=0.0):\n"
        "    return [c.count('!') + bonus for c in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert PythonReward("my_rewards:shout")(["p", "p"], ["hi!", "no"]) == [1.0, 0.0]
    assert PythonReward("my_rewards.shout", bonus=0.5)(["p"], ["hi!!"]) == [2.5]
    with pytest.raises(ValueError):
        PythonReward("shout")


def test_python_reward_calls_trl_style_reward_functions_by_keyword(tmp_path, monkeypatch):
    # TRL calls reward_func(prompts=..., completions=..., **kwargs): a function written for TRL takes completions first
    (tmp_path / "trl_rewards.py").write_text(
        "def length(completions, **kwargs):\n"
        "    assert kwargs['prompts'] == ['q1', 'q2']\n"
        "    return [float(len(c)) for c in completions]\n"
        "def old_style(p, c):\n"
        "    return [float(len(x)) for x in c]\n"
        "def nothing():\n"
        "    return []\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert PythonReward("trl_rewards:length")(["q1", "q2"], ["abc", "a"]) == [3.0, 1.0]  # positionally: the prompts' lengths
    assert PythonReward("trl_rewards:old_style")(["q1", "q2"], ["abc", "a"]) == [3.0, 1.0]  # the earlier positional form
    with pytest.raises(ValueError, match=r"trl_rewards:nothing cannot be called .*def reward\(completions, prompts=None"):
        PythonReward("trl_rewards:nothing")


def test_length_reward():
    r = LengthReward(target_words=4)
    assert r(["p"] * 3, ["a b c d", "a b", "a b c d e f g h i j"]) == [1.0, 0.5, 0.0]


def test_reward_set_shape_order_errors_and_nan():
    rs = RewardSet({"len": LengthReward(2), "const": lambda p, c: [0.5] * len(c)})
    assert rs.names == ["len", "const"] and len(rs) == 2
    out = rs(["p", "p", "p"], ["a b", "a", ""])
    assert out.shape == (3, 2) and out.dtype == torch.float32
    assert out[:, 0].tolist() == [1.0, 0.5, 0.0] and out[:, 1].tolist() == [0.5] * 3
    with pytest.raises(ValueError, match="short"):
        RewardSet({"short": lambda p, c: [1.0]})(["p", "p"], ["a", "b"])
    bad = RewardSet({"ok": lambda p, c: [1.0, 2.0], "bad": lambda p, c: [float("nan"), float("inf")]})
    out = bad(["p", "p"], ["a", "b"])
    assert out[:, 0].tolist() == [1.0, 2.0] and torch.isnan(out[:, 1]).all()


def test_running_norm_matches_concatenated_batches():
    torch.manual_seed(0)
    norm = RunningRewardNorm(num_objectives=2)
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert torch.equal(norm.normalize(x), x)  # before any update: unchanged
    batches = [torch.randn(5, 2) * 3 + 1, torch.randn(1, 2), torch.randn(17, 2) * 0.5 - 2]
    for b in batches:
        norm.update(b)
    norm.update(torch.tensor([[float("nan"), 1e6], [1e6, float("inf")]]))  # ignored rows
    everything = torch.cat(batches).double()
    assert norm.count.item() == 23
    torch.testing.assert_close(norm.mean, everything.mean(0))
    torch.testing.assert_close(norm.var, everything.var(0, unbiased=False))
    expected = (x.double() - everything.mean(0)) / (everything.var(0, unbiased=False) + norm.eps).sqrt()
    torch.testing.assert_close(norm.normalize(x), expected.float())
    # hand check: {1, 3} then {5} -> mean 3, population variance 8/3
    hand = RunningRewardNorm(1)
    hand.update(torch.tensor([[1.0], [3.0]]))
    hand.update(torch.tensor([[5.0]]))
    assert hand.mean.item() == pytest.approx(3.0) and hand.var.item() == pytest.approx(8 / 3)
    assert {"count", "mean", "var"} <= set(norm.state_dict())
    # a bf16 cast of the whole LightningModule leaves the statistics in float64
    assert norm.to(torch.bfloat16).mean.dtype == torch.float64


@pytest.mark.parametrize("path", OBJECTIVES, ids=lambda p: p.stem)
def test_objective_configs(path, tmp_path):
    cfg = compose_train([f"objective={path.stem}"], tmp_path).objective  # composed: an objective may extend another
    names = list(cfg.rewards)
    assert cfg.name == path.stem and len(names) >= 2
    assert len(cfg.reference_point) == len(names) and cfg.grid_points in (11, 21)
    if path.stem.endswith("_hub"):
        return  # needs network to instantiate
    rewards = instantiate(cfg.rewards)
    assert list(rewards) == names and all(callable(rewards[n]) for n in names)
    scores = RewardSet(rewards)([PROMPT], ["hello there"])
    assert scores.shape == (1, len(names)) and torch.isfinite(scores).all()


def test_relevance_does_not_pay_for_restating_or_repeating(relevance):
    prompt = "\n\nHuman: How do I bake bread at home?\n\nAssistant:"
    answer, parrot, repeat = relevance([prompt] * 3, [
        "Mix flour, water, yeast and salt, let the dough rise, then bake it in a hot oven.",
        "How do I bake bread at home?",
        "bread bread bread bread bread bread bread bread",
    ])
    assert parrot == pytest.approx(0.0, abs=1e-6)  # every word pair is the request's
    assert repeat < answer and parrot < answer
    raw = RelevanceReward(copy_penalty="none", repetition_penalty=False)([prompt], ["How do I bake bread at home?"])[0]
    assert raw > answer  # what the discount is for: the raw similarity pays most for parroting
    shuffled = "home bread bake"
    by_pairs = RelevanceReward(copy_penalty="pairs", repetition_penalty=False)([prompt], [shuffled])[0]
    assert by_pairs > answer / 2 and relevance([prompt], [shuffled])[0] == 0.0  # pairs pay a shuffle; words do not


def test_relevance_compares_what_the_response_adds_and_refuses_an_unknown_discount():
    from meal_pl.rewards.relevance import RelevanceReward, without_request_words

    assert without_request_words("How do I bake bread?", "Bake the bread, then let it cool.") == "the , then let it cool."
    assert without_request_words("bake bread", "Bread bake") == ""
    assert without_request_words("How do I bake bread?", "I do not know") == "I do not know"  # no content word copied
    prompt = "\n\nHuman: How do I bake bread?\n\nAssistant:"
    assert RelevanceReward()([prompt], ["Bake bread? How do you bake bread, I wonder."])[0] > 0  # 'wonder' is added
    assert RelevanceReward()([prompt], ["You can bake bread how you do"])[0] == 0.0  # only function words added
    with pytest.raises(ValueError, match="copy_penalty='yes'.*words"):
        RelevanceReward(copy_penalty="yes")


def test_novel_and_distinct_shares_hand_computed():
    from meal_pl.rewards.relevance import distinct_bigram_share, novel_share

    assert novel_share("how do I bake bread", "bake bread with yeast") == pytest.approx(2 / 3)  # 'bake bread' copied
    assert novel_share("anything", "") == 0.0
    assert distinct_bigram_share("I'm I'm I'm I'm") == pytest.approx(2 / 7)  # words i m i m ...: pairs (i,m), (m,i)
    assert distinct_bigram_share("the cat saw the dog and the cat ran") == pytest.approx(7 / 8)  # (the, cat) twice
    assert distinct_bigram_share("") == 0.0


def test_shared_encoder_embeds_each_text_once(relevance):
    from meal_pl.rewards.encoder import shared_encoder

    encoder = shared_encoder()
    assert relevance.encoder is encoder  # rewards built apart share one encoder
    calls = []
    original = encoder._encode_new
    encoder._encode_new = lambda texts: calls.append(list(texts)) or original(texts)
    try:
        texts = ["a new text for the cache test", "another new one"]
        first = encoder.embed(texts)
        views = encoder.layer_features(texts)  # the harm head's view of the same texts: no second forward pass
        again = encoder.embed(texts[::-1])
    finally:
        encoder._encode_new = original
    assert calls == [texts]
    assert torch.equal(again, first.flip(0)) and views.shape == (2, 4 * first.shape[1])
