"""Command-line overrides checked before Hydra runs: unknown keys and mistyped values are one line naming the key."""


import pytest
from conftest import train_cli

from meal_pl.config_check import check_key_overrides, nearest
from meal_pl.runs import CONF_DIR


@pytest.mark.parametrize(
    "args, message",
    [
        (["algorithm.sampler.num_sample=3"], "algorithm.sampler.num_sample is not a config key; did you mean algorithm.sampler.num_samples?"),
        (["trainr.max_steps=3"], "trainr.max_steps is not a config key; did you mean trainer.max_steps?"),
        (["seed=abc"], "seed=abc is not a number; give an integer (e.g. seed=0)"),
        (["-m", "seed=0,abc"], "seed=abc is not a number"),
        (["data.batch_size=four"], "data.batch_size=four is not a number"),
        (["algorithm.policy_optimizer.lr=fast"], "algorithm.policy_optimizer.lr=fast is not a number; give a number"),
        (["algorithm.sampler.relabel=yes"], "algorithm.sampler.relabel=yes is not a boolean; use true or false"),
        # a key that exists only under another group choice is checked against that choice
        (["pwn=uniform", "algorithm.pwn.hidden_dim=8"], "algorithm.pwn.hidden_dim is not a config key"),
    ],
)
def test_bad_key_or_value_is_one_line_naming_the_key(args, message):
    with pytest.raises(ValueError) as err:
        check_key_overrides(args, CONF_DIR)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_valid_overrides_pass():
    check_key_overrides(
        ["-m", "seed=0,1", "algorithm=meal,ric", "trainer.max_steps=4", "algorithm.policy_optimizer.lr=1e-3",
         "trainer.limit_val_batches=0.5", "+trainer.new_key=1", "~callbacks.progress_bar", "hydra.sweeper.n_trials=3",
         "algorithm.pwn.weights=[0.8,0.2]", "pwn=fixed", "ckpt_path=last", "model.lora.r=8", "seed=${oc.env:SEED,0}"],
        CONF_DIR,
    )


@pytest.mark.parametrize("config_name, args, message", [
    ("bench", ["bench.quik=true"], "bench.quik is not a config key; did you mean bench.quick?"),
    ("bench", ["bench.quick=maybe"], "bench.quick=maybe is not a boolean; use true or false"),
    ("bench", ["algorithm.beta=abc"], "algorithm.beta=abc is not a number"),  # a train key, through bench's defaults
    ("reward_model", ["pairs.heldout=3"], "pairs.heldout is not a config key; did you mean pairs.held_out?"),
    ("reward_model", ["rm_backend=trl", "rm_backend.lr=abc"], "rm_backend.lr=abc is not a number"),
    ("reward_model", ["colour=red"], "colour is not a config key; see `python -m meal_pl.reward_model --cfg job`"),
])
def test_bench_and_reward_model_check_their_own_configs(config_name, args, message):
    with pytest.raises(ValueError) as err:
        check_key_overrides(args, CONF_DIR, config_name)
    assert str(err.value).startswith(message)
    check_key_overrides(["bench.quick=true", "bench.methods=[meal,ric]", "objective=synthetic"], CONF_DIR, "bench")
    check_key_overrides(["rm_backend=trl", "rm_backend.model=gpt2", "pairs.held_out=10"], CONF_DIR, "reward_model")


def test_nearest_keeps_only_the_close_keys():
    assert nearest("trainer.max_step", ["trainer.max_steps", "trainer.min_steps", "seed"]) == ["trainer.max_steps"]


def test_cli_prints_one_line_and_exits_2_for_a_misspelled_key(monkeypatch, capsys, tmp_path):
    code, err = train_cli(monkeypatch, capsys, "algorithm.sampler.num_sample=3", f"paths.root_dir={tmp_path}")
    assert code == 2
    assert err.splitlines() == [
        "error: algorithm.sampler.num_sample is not a config key; did you mean algorithm.sampler.num_samples? "
        "(prefix it with + to add a new key on purpose)"
    ]
    assert not any(tmp_path.iterdir())  # refused before any run directory exists


def test_threads_must_be_an_integer_of_at_least_1(tiny_cfg):
    from meal_pl.train import build_run

    with pytest.raises(ValueError, match=r"^threads=abc must be an integer >= 1 \(torch threads\), or null"):
        build_run(tiny_cfg("threads=abc"))
