"""Numeric settings out of range: one line naming the key and what it must be."""

import math

import pytest

from meal_pl.meta import MetaConfig
from meal_pl.ranges import check_integer, check_number
from meal_pl.sampling import RejectionSampler


@pytest.mark.parametrize("value", [-1, 1.5, True, "3", None])
def test_check_integer_refuses_what_is_not_an_integer_at_least_its_floor(value):
    with pytest.raises(ValueError, match=rf"^x.k={value} must be an integer >= 0 \(0: off\)$"):
        check_integer("x.k", value, 0, " (0: off)")


def test_check_integer_takes_the_floor_itself():
    check_integer("x.k", 0, 0)
    check_integer("x.k", 7, 1)


def test_check_integer_with_a_ceiling_takes_it_and_refuses_above_it():
    check_integer("seed", 2**32 - 1, 0, most=2**32 - 1)
    with pytest.raises(ValueError, match=r"^seed=4294967296 must be an integer from 0 to 4294967295$"):
        check_integer("seed", 2**32, 0, most=2**32 - 1)


@pytest.mark.parametrize("value", [-0.5, math.nan, math.inf, True, "1"])
def test_check_number_refuses_negative_nan_inf_and_non_numbers(value):
    with pytest.raises(ValueError, match=r"x.beta=.* must be a finite number >= 0"):
        check_number("x.beta", value)


def test_check_number_strict_refuses_the_floor_and_lenient_takes_it():
    check_number("x.beta", 0)
    check_number("x.lr", 1e-4, strict=True)
    with pytest.raises(ValueError, match=r"^x.lr=0 must be a finite number > 0, e.g. 2e-3$"):
        check_number("x.lr", 0, strict=True, note=", e.g. 2e-3")


@pytest.mark.parametrize("key, value", [("inner_lr", -1.0), ("preference_lr", 0.0), ("regression_weight", -1.0),
                                        ("meta_batch_size", 0), ("buffer_size", 0), ("alternating_every", 0),
                                        ("preference_steps", -1)])
def test_meta_settings_out_of_range_are_refused_with_their_key(key, value):
    with pytest.raises(ValueError, match=rf"algorithm.meta.{key}={value}"):
        MetaConfig(**{key: value})


@pytest.mark.parametrize("key, value", [("tau", -1.0), ("relabel_tau", 0.0)])
def test_sampler_temperatures_out_of_range_are_refused_with_their_key(key, value):
    with pytest.raises(ValueError, match=rf"algorithm.sampler.{key}={value}"):
        RejectionSampler(**{key: value})


@pytest.mark.parametrize("key, value", [("every_n_steps", 0), ("num_prompts", 0), ("num_points", 1)])
def test_pareto_eval_settings_out_of_range_are_refused_with_their_key(key, value):
    from meal_pl.callbacks.pareto_eval import ParetoEvalCallback

    with pytest.raises(ValueError, match=rf"^callbacks.pareto_eval.{key}={value} must be an integer >= "):
        ParetoEvalCallback(**{key: value})


@pytest.mark.parametrize("overrides, message", [
    ({"hidden_size": 100}, r"model.hidden_size=100 must split into model.num_heads=4 heads of an even size"),
    ({"num_layers": 0}, r"model.num_layers=0 must be an integer >= 1"),
    # Below the byte alphabet's 259 tokens BPE would silently build 259; a negative size overflowed in tokenizers.
    ({"vocab_size": 0}, r"^model.vocab_size=0 must be an integer >= 259 \(the 256 bytes"),
    ({"vocab_size": -3}, r"^model.vocab_size=-3 must be an integer >= 259"),
])
def test_tiny_model_shapes_that_cannot_build_are_refused_with_their_key(overrides, message):
    from meal_pl.models import tiny_llama

    with pytest.raises(ValueError, match=message):
        tiny_llama(["some text to train a tokenizer on"], **({"num_heads": 4} | overrides))
