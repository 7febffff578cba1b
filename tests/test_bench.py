"""The baselines and the benchmark: configs, each method on a micro model, the report, the entry point."""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train

from meal_pl.bench import report
from meal_pl.bench.__main__ import check_bench, skip_reason
from meal_pl.bench.plan import METHODS, per_run_steps, plan_runs
from meal_pl.bench.runs import eval_settings, evaluate, fit, run_linear, run_single, run_soups
from meal_pl.bench.trl_peer import evaluate_untagged
from meal_pl.pareto import simplex_grid
from meal_pl.train import build

ROOT = Path(__file__).resolve().parents[1]
# A few steps at a high learning rate: the policy loss (NLL of the selected samples) must visibly fall.
MICRO = TINY + [
    "objective=synthetic",
    "logger=none",
    "~callbacks.model_checkpoint",
    "callbacks.pareto_eval.every_n_steps=1000",
    "algorithm.warmup_steps=1",
    "algorithm.policy_optimizer.lr=3e-2",
    "algorithm.meta.alternating_every=2",
    "trainer.max_steps=8",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def assert_loss_falls(losses: list[float]) -> None:
    assert len(losses) >= 4 and statistics.fmean(losses[-2:]) < statistics.fmean(losses[:2]), losses


def assert_front(report_: dict, num_points: int) -> None:
    assert len(report_["points"]) == num_points
    assert 0 < report_["hypervolume"] <= report_["max_hypervolume"]
    assert all(len(p["rewards"]) == 2 for p in report_["points"])


@pytest.mark.parametrize(
    "overrides, source, tau, relabel, neutral",
    [
        # every method shares the selection and tag settings; they differ in where preferences come from
        (["algorithm=ric"], "UniformPreferences", 0.5, False, False),
        (["algorithm=linear"], "FixedPreferences", 0.5, False, True),
        (["algorithm=soups"], "FixedPreferences", 0.5, False, True),
        (["algorithm=ric", "pwn=fixed"], "FixedPreferences", 0.5, False, False),  # the command line wins
        (["pwn=uniform"], "UniformPreferences", 0.5, False, False),
        (["algorithm=ric", "pwn=group", "algorithm.pwn.means={a:[0,1]}"], "GroupPreferences", 0.5, False, False),
        (["algorithm=ric", "algorithm.sampler.tau=0", "algorithm.sampler.relabel=true"], "UniformPreferences", 0.0, True, False),
    ],
)
def test_baseline_configs(overrides, source, tau, relabel, neutral, tmp_path):
    algo = compose_train(overrides, tmp_path).algorithm
    assert algo._target_ == "meal_pl.module.MealModule" and algo.pwn._target_.endswith(source)
    assert (algo.sampler.tau, algo.sampler.relabel, algo.neutral_tags) == (tau, relabel, neutral)


@pytest.mark.parametrize("method", ["ric", "meal", "meal_second_order", "meal_first_order", "meal_alternating", "meal_frozen"])
def test_single_policy_method_trains_and_reports_a_front(method, tmp_path):
    result = run_single(compose_train(MICRO + METHODS[method].overrides, tmp_path), warmup_steps=0)
    assert_loss_falls(result["policy_loss"])
    assert_front(result["front"], 11)
    assert result["samples"] == 8 * 4 * 2 and len(result["step_cpu"]) == 8
    assert (result["front"]["pwn_choice"] is None) == (method == "ric")  # a Dirichlet source has no choice


def test_meal_step_updates_the_pwn(tmp_path):
    module, _, _ = fit(compose_train(MICRO + ["algorithm.meta.exploration=0"], tmp_path), 0)
    assert module.pwn.mlp[-1].weight.abs().sum() > 0  # zero at init: the meta step moved it


def test_linear_trains_one_policy_per_vector(tmp_path):
    runs = plan_runs("linear", 8, 2, 3, "policy")
    cfgs = [compose_train(MICRO + ["algorithm=linear", *extra], tmp_path / name) for name, extra in runs]
    result = run_linear(cfgs, warmup_steps=0)
    assert [p["preference"] for p in result["front"]["points"]] == [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]
    assert_front(result["front"], 3)
    for losses in result["policy_loss_per_run"]:
        assert_loss_falls(losses)
    assert result["policies"] == 3 and result["samples"] == 3 * 8 * 4 * 2


def test_soups_interpolate_per_objective_policies(tmp_path):
    runs = plan_runs("soups", 8, 2, 11, "policy")
    cfgs = [compose_train(MICRO + ["algorithm=soups", *extra], tmp_path / name) for name, extra in runs]
    result = run_soups(cfgs, warmup_steps=0)
    assert_front(result["front"], 11)
    for losses in result["policy_loss_per_run"]:
        assert_loss_falls(losses)
    points = [p["rewards"] for p in result["front"]["points"]]
    assert len({tuple(p) for p in points}) > 1  # the interpolation changes the policy along the grid


def test_linear_soups_and_trl_evaluations_average_the_draws_the_callback_averages(tmp_path):
    # callbacks.pareto_eval.draws reaches the methods evaluated outside the callback: each prompt answered under the
    # seeds eval_seed, eval_seed + 1, ... and averaged, as the single-policy methods' callback does.
    cfg = compose_train(MICRO + ["trainer.max_steps=2", "callbacks.pareto_eval.draws=2"], tmp_path)
    assert eval_settings(cfg) == (4, None, 2)
    module, _, _ = fit(cfg, warmup_steps=0)
    prompts, grid = module.eval_prompts(4), simplex_grid(2, 3)
    first, both = evaluate(module, prompts, grid), evaluate(module, prompts, grid, draws=2)
    untagged_first, untagged_both = evaluate_untagged(module, prompts), evaluate_untagged(module, prompts, draws=2)
    module.eval_seed += 1
    second, untagged_second = evaluate(module, prompts, grid), evaluate_untagged(module, prompts)
    assert not torch.equal(first, second)  # two draws, two different sets of answers
    torch.testing.assert_close(both, (first + second) / 2)
    torch.testing.assert_close(untagged_both, (untagged_first + untagged_second) / 2)


def test_trl_grpo_peer_trains_and_is_scored(tmp_path):
    from meal_pl.bench.trl_peer import run_trl

    result = run_trl(compose_train(MICRO + ["trainer.max_steps=3"], tmp_path), warmup_steps=0)
    assert result["steps"] == 3 and result["samples"] == 3 * 4 * 2
    assert len(result["point"]) == 2 and all(0 <= r <= 1 for r in result["point"])
    assert result["tokens_per_s"][0] > 0 and len(result["step_wall"]) == 3


def test_the_grpo_peers_prompts_are_the_other_methods_on_a_chat_model(tmp_path):
    # A chat model: every meal-pl method reads its prompts through the chat template (sampling.encode_prompts); the
    # peer must train on the same text, and its rewards must read the data's own prompt as ours do.
    from meal_pl.bench.trl_peer import peer_prompts, reward_func
    from meal_pl.chat import use_chat_template
    from meal_pl.sampling import encode_prompts

    datamodule, module = build(compose_train(MICRO, tmp_path))
    tok = module.tokenizer
    tok.chat_template = ("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    use_chat_template(tok, True)
    prompts = datamodule.eval_prompts(4)
    ids, mask, _ = encode_prompts(tok, prompts, module.max_prompt_length)
    ours = [tok.decode(row[m.bool()]) for row, m in zip(ids, mask)]
    assert peer_prompts(tok, prompts, module.max_prompt_length) == ours and all("[user]" in p for p in ours)
    seen = []
    reward = reward_func("a", lambda p, c: seen.append(p) or [0.0] * len(c))
    reward(prompts=ours, completions=["x"] * 4, hh_prompt=prompts)
    assert seen == [prompts]


def test_trl_peer_is_skipped_with_a_message_without_trl(monkeypatch):
    monkeypatch.setattr("meal_pl.bench.__main__.trl_available", lambda: False)
    assert "pip install" in skip_reason("trl_grpo") and skip_reason("ric") is None


def test_equal_budget_rules():
    assert per_run_steps(40, 5, "front") == 8 and per_run_steps(40, 5, "policy") == 40
    assert per_run_steps(3, 11, "front") == 1  # every policy trains at least one step
    assert [extra for _, extra in plan_runs("soups", 40, 2, 11, "front")] == [
        ["trainer.max_steps=20", "algorithm.pwn.weights=[1,0]"],
        ["trainer.max_steps=20", "algorithm.pwn.weights=[0,1]"],
    ]
    with pytest.raises(ValueError, match="bench.budget"):
        per_run_steps(40, 5, "prompt")


def row(method, hv, cpu, wall=1.0, sps=10.0, ratio=None):
    return {"method": method, "hv": hv, "ratio": ratio, "step_cpu": cpu, "step_wall": wall, "samples_per_s": sps, "seeds": ["0"]}


def test_checks_compare_against_the_issue_targets():
    rows = [row("ric", 0.30, 1.0, sps=50), row("meal", 0.40, 2.0, ratio=0.95), row("meal_first_order", 0.20, 1.4, ratio=0.5),
            row("meal_alternating", 0.35, 1.05, ratio=0.91), row("trl_grpo", 0.1, 1.0, sps=40)]
    lines = "\n".join(report.checks(rows, synthetic=True))
    assert "meal: HV / analytic max = 0.950 (target >= 0.9): met" in lines
    assert "meal_first_order: HV / analytic max = 0.500 (target >= 0.9): NOT met" in lines
    assert "meal_first_order vs ric: HV 0.2000 vs 0.3000 (mean over 1 seeds): meal < ric" in lines
    assert "cost meal_first_order / ric: 1.40x CPU time per step" in lines and "(target <= 1.3x): NOT met" in lines
    assert "cost meal_alternating / ric: 1.05x" in lines
    assert "cost meal / ric: 2.00x CPU time per step" in lines and "(target <= 1.15x): NOT met" in lines
    assert "samples/s ric vs TRL GRPOTrainer: 50.0 vs 40.0 wall (1.25x), 1.00x per CPU-second (target >= 2.0x): NOT met" in lines
    assert "samples/s meal vs TRL GRPOTrainer: 10.0 vs 40.0 wall (0.25x), 0.50x per CPU-second (target >= 1.5x): NOT met" in lines
    assert "samples/s meal_first_order vs TRL GRPOTrainer: 10.0 vs 40.0 wall (0.25x), 0.71x per CPU-second (target >= 1.0x): NOT met" in lines


def test_a_bench_whose_method_fails_writes_its_table_and_exits_1(tmp_path):
    out = tmp_path / "bench"
    micro = [o for o in TINY if o != "~callbacks.progress_bar"] + ["trainer.max_steps=2"]
    cmd = [sys.executable, "-m", "meal_pl.bench", "objective=synthetic", "bench.seeds=1", "bench.methods=[ric]",
           "bench.warmup_steps=0", f"hydra.run.dir={out}", *micro, "data.eval_size=100000"]  # no prompt left to train on
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 of 1 methods failed (ric); bench.md's rows say why")
    rows = {r["method"]: r for r in json.loads((out / "bench.json").read_text())["methods"]}
    assert "leave none to train on" in rows["ric"]["error"] and "| ric | failed: " in (out / "bench.md").read_text()


def test_bench_entry_point_writes_table_json_and_figure(tmp_path):
    out = tmp_path / "bench"
    micro = [o for o in TINY if o != "~callbacks.progress_bar"] + ["trainer.max_steps=2"]
    cmd = [sys.executable, "-m", "meal_pl.bench", "objective=synthetic", "bench.seeds=2", "bench.threads=1",
           "bench.methods=[soups]", "bench.warmup_steps=0", f"hydra.run.dir={out}", "callbacks.pareto_eval.draws=2", *micro]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "bench.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    assert set(rows) == {"soups"} and rows["soups"]["error"] is None
    # One method keeps this test short; the budget rule makes its two policies share 2 steps x 4 x 2 samples.
    assert rows["soups"]["samples"] == 2 * 4 * 2 and rows["soups"]["policies"] == 2
    assert len(rows["soups"]["hv_per_seed"]) == 2 and rows["soups"]["peak_memory_mib"] > 0
    md = (out / "bench.md").read_text()
    assert "| soups |" in md and (out / "bench.png").stat().st_size > 1000
    assert summary["draws"] == 2 and "every front from 2 answers per prompt and preference" in md
    # steerability per objective in every output; the differences section is there even when it has no pair
    assert set(rows["soups"]["steerability"]) == {"a_to_m", "n_to_z"} and "steer. n_to_z" in md
    assert summary["differences"] == [] and "Differences" in md and "differences" in proc.stdout
    assert "hypervolume" in proc.stdout and "soups" in proc.stdout


def fake_result(method, hvs, groups=None, steer=(0.9, 0.5)):
    """A worker result as run_single returns it, one seed per hypervolume, without training anything."""
    seeds = {}
    for i, hv in enumerate(hvs):
        front = {"points": [{"preference": [1.0, 0.0], "rewards": [0.5, 0.1]}, {"preference": [0.0, 1.0], "rewards": [0.1, 0.5]}],
                 "hypervolume": hv, "hypervolume_ratio": hv / 0.45, "initial_hypervolume": 0.1,
                 "pwn_choice": {"weights": [0.5, 0.5], "rewards": [0.3, 0.3]},
                 "steerability": {"a_to_m": steer[0] + i * 0.1, "n_to_z": steer[1]},
                 "groups": {g: {"pwn_weights": w, "hypervolume": h[i]} for g, (w, h) in (groups or {}).items()}}
        seeds[str(i)] = {"front": front, "samples": 64, "step_wall": [1.0], "step_cpu": [1.0], "tokens_per_s": [10.0],
                         "run_time": 5.0, "policy_loss": [2.0, 1.0]}
    return {"method": method, "kind": "single", "seeds": seeds, "peak_memory_mib": 100.0}


def test_pooled_sd_hand_values():
    # equal seed counts: sqrt((s1^2 + s2^2) / 2); s1^2 = var(1,3) = 2, s2^2 = var(2,2,...) = 0
    assert report.pooled_sd([1.0, 3.0], [5.0, 5.0]) == pytest.approx((2 / 2) ** 0.5)
    assert report.pooled_sd([1.0, 3.0], [4.0, 8.0]) == pytest.approx(((2 + 8) / 2) ** 0.5)
    # unequal counts: weighted by degrees of freedom
    assert report.pooled_sd([1.0, 3.0], [0.0, 3.0, 6.0]) == pytest.approx(((1 * 2 + 2 * 9) / 3) ** 0.5)
    assert report.pooled_sd([1.0], [2.0]) is None  # one seed each: no spread to pool


def test_summary_rows_carry_groups_steerability_and_differences():
    groups = lambda wa, ha, hb: {"a": ([wa, 1 - wa], ha), "b": ([1 - wa, wa], hb)}  # noqa: E731
    results = [
        fake_result("meal", [0.30, 0.34], groups(0.8, [0.20, 0.24], [0.10, 0.10])),
        fake_result("meal_frozen", [0.28, 0.30], groups(0.5, [0.18, 0.18], [0.12, 0.10])),
        fake_result("ric", [0.31, 0.31]),
    ]
    rows = [report.summarize(r, "", 4, 2, [0.0, 0.0], 0.45) for r in results]
    meal = rows[0]
    assert meal["steerability"] == pytest.approx({"a_to_m": 0.95, "n_to_z": 0.5})  # mean over seeds
    assert meal["groups"]["a"]["pwn_weights"] == pytest.approx([0.8, 0.2]) and meal["groups"]["a"]["hv"] == pytest.approx(0.22)
    assert meal["groups"]["b"]["hv_per_seed"] == [0.10, 0.10] and rows[2]["groups"] == {}

    diffs = {(d["a"], d["b"], d["group"]): d for d in report.differences(rows)}
    assert set(diffs) == {("meal", "meal_frozen", None), ("meal", "meal_frozen", "a"), ("meal", "meal_frozen", "b"),
                          ("meal", "ric", None)}
    overall = diffs[("meal", "meal_frozen", None)]
    sd = ((statistics.variance([0.30, 0.34]) + statistics.variance([0.28, 0.30])) / 2) ** 0.5
    assert overall["hv_diff"] == pytest.approx(0.03) and overall["pooled_sd"] == pytest.approx(sd)
    assert overall["d"] == pytest.approx(0.03 / sd) and overall["seeds"] == [2, 2]
    assert diffs[("meal", "ric", None)]["hv_diff"] == pytest.approx(0.01)
    lines = report.difference_lines(report.differences(rows))
    assert f"meal - meal_frozen: HV +0.0300 (pooled sd {sd:.4f}, d = {0.03 / sd:+.2f}; 2 + 2 seeds)" in lines
    assert any(line.startswith("meal - meal_frozen (group b): HV -0.0100") for line in lines)

    md = report.markdown_table(rows, ["a_to_m", "n_to_z"])
    assert "| steer. a_to_m | steer. n_to_z |" in md and "| +0.95 | +0.50 |" in md
    groups_md = report.markdown_group_table(rows)
    assert "| meal | a | (0.80, 0.20) | 0.2200 ± 0.0283 |" in groups_md
    assert report.markdown_group_table(rows[2:]) == ""  # ric alone reports no groups


def test_differences_need_both_methods():
    rows = [report.summarize(fake_result("meal_first_order", [0.3]), "", 4, 2, [0.0, 0.0], None)]
    assert report.differences(rows) == []
    rows.append(report.summarize(fake_result("meal_frozen", [0.2]), "", 4, 2, [0.0, 0.0], None))
    (only,) = report.differences(rows)
    assert only["a"] == "meal_first_order" and only["pooled_sd"] is None and only["d"] is None
    assert report.difference_lines([only]) == ["meal_first_order - meal_frozen: HV +0.1000 (pooled sd — (one seed each); 1 + 1 seeds)"]


def test_bench_runs_a_method_under_each_conditioning_backend(tmp_path):
    out = tmp_path / "bench"
    micro = [o for o in TINY if o != "~callbacks.progress_bar"] + ["trainer.max_steps=1"]
    cmd = [sys.executable, "-m", "meal_pl.bench", "objective=synthetic", "bench.seeds=1", "bench.threads=1",
           "bench.methods=[ric]", "bench.conditioning=[tags,embedding]", "bench.warmup_steps=0",
           f"hydra.run.dir={out}", *micro]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["method"]: r for r in json.loads((out / "bench.json").read_text())["methods"]}
    assert set(rows) == {"ric@tags", "ric@embedding"} and all(r["error"] is None for r in rows.values())
    config = (out / "runs" / "ric@embedding" / "seed0" / "main" / "config.yaml").read_text()
    assert "EmbeddingConditioner" in config


@pytest.mark.parametrize("change, line", [
    ({"seeds": 0}, r"^bench.seeds=0 must be an integer >= 1"),
    ({"warmup_steps": -1}, r"^bench.warmup_steps=-1 must be an integer >= 0"),
    ({"budget": "prompt"}, r"^bench.budget='prompt'; choose one of"),
    ({"methods": ["ric", "mael"]}, r"^bench.methods=\['ric', 'mael'\]: unknown or none"),
    ({"methods": []}, r"^bench.methods=\[\]: unknown or none"),
])
def test_bench_settings_are_checked_before_any_run(change, line):
    from omegaconf import OmegaConf

    bench = OmegaConf.create({"seeds": 3, "warmup_steps": 2, "budget": "front", "methods": ["ric", "meal"]} | change)
    check_bench(OmegaConf.create({"seeds": 3, "warmup_steps": 2, "budget": "front", "methods": ["ric"]}), None, None)
    with pytest.raises(ValueError, match=line):
        check_bench(bench, None, None)
    with pytest.raises(ValueError, match=r"^bench.threads=0 must be an integer >= 1"):
        check_bench(OmegaConf.create({"seeds": 3, "warmup_steps": 2, "budget": "front", "methods": ["ric"]}), None, 0)


def test_a_bad_bench_setting_is_one_line_and_exits_1(tmp_path):
    cmd = [sys.executable, "-m", "meal_pl.bench", "objective=synthetic", "bench.seeds=0", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == ["error: bench.seeds=0 must be an integer >= 1 (seeds per method)"]
