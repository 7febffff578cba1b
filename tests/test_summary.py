"""The end-of-run summary: whole paths, PWN lines only where a PWN exists."""

from meal_pl.callbacks.summary import summary_lines
from meal_pl.logs import DropAdverts, LogProgress

REPORT = {
    "initial_hypervolume": 0.1, "hypervolume": 0.2, "hypervolume_ratio": 0.44, "objective_names": ["a", "b"],
    "steerability": {"a": 0.5, "b": 0.25}, "pwn_choice": {"weights": [0.7, 0.3], "rewards": [0.4, 0.2]},
}


def test_summary_keeps_long_paths_whole_and_shows_the_pwn_only_for_meal(tmp_path):
    out = tmp_path / ("a_very_long_directory_name_" * 6) / "run"
    meal = summary_lines(120, 12.3, REPORT, str(out), pwn=True)
    ric = summary_lines(120, 12.3, REPORT, str(out), pwn=False)
    assert meal[-1].endswith(str(out.resolve())) and len(meal[-1]) > 200  # no ellipsis, no wrapping
    assert any("PWN's own preference" in line and "a=0.70, b=0.30" in line for line in meal)
    assert not any("PWN" in line for line in ric)
    assert any("0.1000 (initial) -> 0.2000 (final)" in line for line in ric)


def test_summary_shows_the_steerability_interval_when_the_report_has_one():
    plain = summary_lines(120, 1.0, REPORT, "/tmp/run", pwn=False)
    assert any(line.split()[0] == "steerability" and line.endswith("a=0.50, b=0.25") for line in plain)
    both = summary_lines(120, 1.0, REPORT | {"steerability_interval": {"a": [-0.1, 0.9], "b": [0.05, 0.4]}},
                         "/tmp/run", pwn=False)
    assert any("a=0.50 [-0.10, +0.90], b=0.25 [+0.05, +0.40] (90% interval" in line for line in both)
    assert not any("answers per prompt" in line for line in both)  # one draw, the default: nothing to say
    drawn = summary_lines(120, 1.0, REPORT | {"draws": 5}, "/tmp/run", pwn=False)
    assert any(line.split()[0] == "steerability" and line.endswith("; 5 answers per prompt and preference") for line in drawn)


def test_summary_warns_when_the_policy_repeats_itself():
    fine = summary_lines(120, 1.0, REPORT, "/tmp/run", pwn=False, distinct_tokens=0.83)
    stuck = summary_lines(120, 1.0, REPORT, "/tmp/run", pwn=False, distinct_tokens=0.06)
    assert any("distinct tokens" in line and "0.83" in line and "repeats" not in line for line in fine)
    assert any("0.06" in line and "the policy repeats itself" in line for line in stuck)


def test_adverts_are_dropped_and_other_records_pass():
    import logging

    make = lambda msg: logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, msg, None, None)  # noqa: E731
    assert not DropAdverts().filter(make("💡 Tip: For seamless cloud logging ... litlogger"))
    assert DropAdverts().filter(make("GPU available: False, used: False"))


def test_progress_log_interval_is_checked():
    import pytest

    with pytest.raises(ValueError, match="callbacks.progress_log.every_n_steps=0 must be >= 1"):
        LogProgress(every_n_steps=0)


def test_summary_prints_pwn_weights_per_group():
    groups = {"a": {"num_prompts": 16, "pwn_weights": [0.81, 0.19], "hypervolume": 0.3125},
              "b": {"num_prompts": 16, "pwn_weights": [0.27, 0.73], "hypervolume": None}}
    lines = summary_lines(4, 1.0, REPORT | {"groups": groups}, "/tmp/run", pwn=True)
    rows = {line.split()[0]: line for line in lines if line.startswith("    ")}
    assert any("per prompt group" in line for line in lines)
    assert "a=0.81, b=0.19" in rows["a"] and "HV 0.3125" in rows["a"] and "16 prompts" in rows["a"]
    assert "a=0.27, b=0.73" in rows["b"] and "HV —" in rows["b"]
    ric = summary_lines(4, 1.0, REPORT | {"groups": groups}, "/tmp/run", pwn=False)
    assert not any("0.81" in line for line in ric) and any("HV 0.3125" in line for line in ric)
    assert not any("per prompt group" in line for line in summary_lines(4, 1.0, REPORT | {"groups": {}}, "/tmp/run", pwn=True))


def test_config_summary_logs_the_warm_start_the_run_uses():
    from omegaconf import OmegaConf

    from meal_pl.logs import config_summary

    cfg = OmegaConf.create({"paths": {"output_dir": "/tmp/run"}, "seed": 0, "trainer": {"max_steps": 4},
                            "data": {"batch_size": 2}, "algorithm": {"sampler": {}},
                            "warm_start": {"steps": 300},
                            "objective": {"warm_start_steps": 1200}})
    assert "warm_start_steps=1200" in config_summary(cfg, {}, None)[-1]
    cfg.objective = {}
    assert "warm_start_steps=300" in config_summary(cfg, {}, None)[-1]


def test_the_warm_start_says_what_it_runs_and_what_it_did(tiny_cfg, caplog):
    import logging

    from meal_pl.train import build_run

    datamodule, module, trainer = build_run(tiny_cfg("objective=synthetic", "logger=none", "trainer.max_steps=1"))
    with caplog.at_level(logging.INFO, logger="meal_pl"):
        trainer.fit(module, datamodule=datamodule)
    lines = [r.getMessage() for r in caplog.records if r.name == "meal_pl" and r.getMessage().startswith("warm start")]
    assert len(lines) == 3, lines
    pairs = len(datamodule.sft_pairs())
    # 5 steps of 16 answers use 80 of them: only those are scored (and said so)
    assert lines[0] == f"warm start: 5 steps of 16 use at most 80 of the {pairs} answers: only those are scored and tokenised"
    assert lines[1].startswith("warm start: 5 SFT steps on 80 answers") and "warm_start.steps" in lines[1]
    assert lines[2].startswith("warm start done in ") and " -> " in lines[2]
