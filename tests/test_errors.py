"""Bad input: one line that names the value and the fix, a non-zero exit, no traceback (unless HYDRA_FULL_ERROR=1)."""

import sys

import pytest
import torch
from conftest import ONE_STEP, compose_train, train_cli

from meal_pl import train as entry
from meal_pl.pwn import FixedPreferences
from meal_pl.runs import check_group_overrides
from meal_pl.sampling import RejectionSampler


@pytest.mark.parametrize(
    "args, message",
    [
        (["objective=helpful_harmles"], "objective=helpful_harmles is not a config option; choose one of: helpful_harmless, "),
        (["model=llama3"], "model=llama3 is not a config option; choose one of: llama2_7b, qwen2_5_0_5b, smollm2_135m, tiny"),
        (["hardware=tpu"], "hardware=tpu is not a config option; choose one of: cpu, cpu_bf16, ddp, deepspeed, fsdp, gpu"),
        (["-m", "seed=1,2", "objective=synthetic,synthtic"], "objective=synthtic is not a config option"),
    ],
)
def test_unknown_config_group_option_names_it_and_the_choices(args, message):
    with pytest.raises(ValueError, match=message):
        check_group_overrides(args)


def test_known_options_deletions_and_other_keys_pass_the_check():
    check_group_overrides(["objective=synthetic,synthetic3", "~logger", "+experiment=synthetic_quick", "seed=3", "-m"])


def test_cli_prints_one_line_and_exits_2_for_an_unknown_option(monkeypatch, capsys):
    code, err = train_cli(monkeypatch, capsys, "objective=nope")
    assert code == 2
    assert err.splitlines() == [
        "error: objective=nope is not a config option; choose one of: helpful_harmless, helpful_harmless_hub, "
        "helpful_harmless_humor_hub, helpful_profanity, synthetic, synthetic3, synthetic3_prompted, synthetic_prompted "
        "(files in conf/objective/)"
    ]


def test_cli_reports_a_run_error_in_one_line_and_keeps_the_traceback_in_the_run_dir(monkeypatch, capsys, tmp_path):
    run_dir, missing = tmp_path / "run", tmp_path / "prompts.jsonl"
    code, err = train_cli(monkeypatch, capsys, f"data.path={missing}", f"hydra.run.dir={run_dir}", *ONE_STEP)
    assert code != 0
    assert err.splitlines()[0] == (
        f"error: data file not found: {missing} (config key data.path; a relative path is relative to the "
        "directory you run from; data.path=null uses the shipped prompt set)"
    )
    assert "Traceback" not in err
    assert "Traceback" in (run_dir / "error.txt").read_text()


@pytest.mark.parametrize(
    "weights, message",
    [
        ([0.5, 0.3, 0.2], r"algorithm.pwn.weights=\[0.5,0.3,0.2\] has 3 values but the objective has 2; give one per objective"),
        ([1.2, -0.2], r"algorithm.pwn.weights=\[1.2,-0.2\] has a negative or non-finite value"),
        ([0.5, 0.6], r"algorithm.pwn.weights=\[0.5,0.6\] sums to 1.1000; give weights that sum to 1"),
    ],
)
def test_bad_preference_vector(weights, message):
    with pytest.raises(ValueError, match=message):
        FixedPreferences(feature_dim=4, num_objectives=2, weights=weights)


def test_n_below_one():
    with pytest.raises(ValueError, match=r"algorithm.sampler.num_samples=0 must be >= 1"):
        RejectionSampler(num_samples=0)


def test_unknown_scalarization_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"algorithm.sampler.scalarization='chebyshev'; choose one of \('linear', 'tchebycheff'\)"):
        RejectionSampler(scalarization="chebyshev")


def test_prompt_budget_over_the_model_context_is_refused(tmp_path):
    cfg = compose_train(ONE_STEP + ["algorithm.max_prompt_length=600"], tmp_path)
    with pytest.raises(ValueError, match=r"algorithm.max_prompt_length=600 \+ 2 preference tags \+ .* exceed the model context of 512"):
        entry.train(cfg)


def test_prompt_overflow_error_refuses_long_prompts_before_training(tmp_path):
    cfg = compose_train(ONE_STEP + ["algorithm.max_prompt_length=8", "algorithm.prompt_overflow=error"], tmp_path)
    with pytest.raises(ValueError, match=r"\d+ of \d+ prompts are longer than algorithm.max_prompt_length=8 tokens .*prompt_overflow=truncate"):
        entry.train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_prompt_overflow_truncate_warns_and_counts(tmp_path):
    cfg = compose_train(ONE_STEP + ["algorithm.max_prompt_length=8"], tmp_path)
    with pytest.warns(UserWarning, match=r"prompts are longer than algorithm.max_prompt_length=8 tokens"):
        metrics = entry.train(cfg)
    assert metrics["count/truncated_prompts"] == 4  # the step's batch of 4, every prompt over 8 tokens
    assert torch.isfinite(torch.tensor(metrics["train/policy_loss"]))


def test_hydra_full_error_shows_the_original_exception(monkeypatch, tmp_path):
    missing = tmp_path / "prompts.jsonl"
    monkeypatch.setattr(sys, "argv", ["meal_pl.train", f"data.path={missing}", f"hydra.run.dir={tmp_path / 'run'}", *ONE_STEP])
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(FileNotFoundError, match="data file not found"):
        entry.cli()


def test_instantiation_errors_are_reported_by_their_cause_on_one_line():
    from hydra.errors import InstantiationException

    from meal_pl.runs import one_line

    try:
        try:
            RejectionSampler(num_samples=0)
        except ValueError as cause:
            raise InstantiationException("Error in call to target 'RejectionSampler':\nValueError(...)\nfull_key: x") from cause
    except InstantiationException as err:
        line = one_line(err)
    assert line == "error: algorithm.sampler.num_samples=0 must be >= 1 (N, the responses sampled per prompt)"
    assert one_line(RuntimeError("line one\n  line two")) == "error: line one line two"
    assert one_line(KeyError("k")) == "error: KeyError: 'k'"
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    with pytest.raises(MissingMandatoryValue) as missing:
        OmegaConf.create({"rm_backend": {"model": "???"}}).rm_backend.model  # noqa: B018  (the access raises)
    assert one_line(missing.value) == ("error: rm_backend.model has no value (its config leaves it ???); give one on "
                                       "the command line: rm_backend.model=...")


def test_a_gpu_config_on_a_machine_without_one_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, err = train_cli(monkeypatch, capsys, "objective=synthetic", "hardware=gpu", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 1 and err.strip().splitlines() == [
        "error: trainer.accelerator=gpu (hardware=gpu, fsdp and deepspeed) needs a CUDA GPU, and this machine's torch "
        "sees none; use hardware=cpu, or hardware=cpu_bf16 on a CPU with bf16 units"]


@pytest.mark.parametrize("override, line", [
    ("data.batch_size=0", "error: data.batch_size=0 must be an integer >= 1"),
    ("algorithm.policy_optimizer.lr=nan", "error: algorithm.policy_optimizer.lr=nan must be a finite number > 0, e.g. 2e-3"),
    ("data.eval_size=-1", "error: data.eval_size=-1 must be an integer >= 1"),
    ("algorithm.beta=-1", "error: algorithm.beta=-1 must be a finite number >= 0 (the KL weight; 0: no KL term)"),
    ("algorithm.gradient_clip_val=-1",
     "error: algorithm.gradient_clip_val=-1 must be a finite number > 0 (the norm gradients are clipped to)"),
    ("algorithm.eval_batch_size=0", "error: algorithm.eval_batch_size=0 must be an integer >= 1"),
    ("warm_start.steps=-3", "error: warm_start.steps=-3 must be an integer >= 0 (0: no warm start)"),
    ("algorithm.meta.meta_batch_size=0", "error: algorithm.meta.meta_batch_size=0 must be an integer >= 1"),
    ("objective.grid_points=1", "error: objective.grid_points=1 must be an integer >= 2 (the simplex's corners)"),
    ("seed=-1", "error: seed=-1 must be an integer from 0 to 4294967295"),
    ("threads=0", "error: threads=0 must be an integer >= 1 (torch threads), or null for torch's default"),
    ("objective.reference_point=[0]", "error: objective.reference_point=[0.0] has 1 values but the objective has 2 "
     "(['a_to_m', 'n_to_z']); give one per objective"),
    ("algorithm.pwn.hidden_dim=0", "error: algorithm.pwn.hidden_dim=0 must be an integer >= 1"),
    ("model.lora.r=-1", "error: model.lora.r=-1 must be an integer >= 0 (0: full fine-tuning)"),
    ("algorithm.pwn.temperature=0", "error: algorithm.pwn.temperature=0 must be > 0"),
    ("algorithm.sampler.max_new_tokens=0", "error: algorithm.sampler.max_new_tokens=0 must be >= 1"),
    ("trainer.max_steps=0", "error: trainer.max_steps=0 trains no step, and the run would end with no evaluation and no "
     "checkpoint; give trainer.max_steps >= 1 (with 1, pareto.json's initial_front is the warm-started policy's)"),
])
def test_bad_numbers_name_their_key_in_one_line(override, line, monkeypatch, capsys, tmp_path):
    code, err = train_cli(monkeypatch, capsys, "objective=synthetic", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 1 and err.strip().splitlines() == [line]
