"""generate / evaluate / export on a checkpoint of a real (micro, LoRA) training run."""

import json
import sys

import pytest
import torch
from conftest import TINY, compose_train
from transformers import AutoModelForCausalLM, AutoTokenizer

from meal_pl import evaluate, export, generate
from meal_pl.precision import forward_context, use_run_precision
from meal_pl.pwn import PreferenceWeightNet
from meal_pl.restore import load_run, run_cli
from meal_pl.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One micro LoRA run on the synthetic objective (a few seconds); its directory is what the CLIs read."""
    out = tmp_path_factory.mktemp("run")
    # tags: the export below is compared without a preference context (tests/test_conditioning_runs.py covers the rest)
    overrides = TINY + ["objective=synthetic", "conditioning=tags", "model.lora.r=4", "logger=none", "trainer.max_steps=2",
                        "callbacks.pareto_eval.every_n_steps=100", "callbacks.generations.num_prompts=2"]
    train(compose_train(overrides, out))
    return out


def test_run_dir_holds_config_tokenizer_generations_and_a_copy_free_checkpoint(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any(k.startswith("ref.") for k in state) and any("lora_A" in k for k in state)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "tokenizer" / "tokenizer.json").is_file()
    record = json.loads((run_dir / "generations.json").read_text())
    assert record["preferences"] == [[1.0, 0.0], [0.0, 1.0]] and len(record["samples"]) == 2
    assert list(record["samples"][0]["responses"]) == ["<a_to_m:1.00><n_to_z:0.00>", "<a_to_m:0.00><n_to_z:1.00>"]


def test_evaluate_reproduces_the_training_front(run_dir, tmp_path, capsys):
    evaluate.main([f"ckpt_path={run_dir}/checkpoints/last.ckpt", "num_prompts=4", f"out={tmp_path}"])
    trained, again = (json.loads(p.read_text()) for p in (run_dir / "pareto.json", tmp_path / "pareto.json"))
    # Same prompts, same grid, same evaluation seed, weights restored exactly: the same front.
    assert again["hypervolume"] == pytest.approx(trained["hypervolume"])
    assert again["pwn_choice"]["weights"] == pytest.approx(trained["pwn_choice"]["weights"])
    assert again["steerability_interval"] == trained["steerability_interval"]  # the same rewards, the same redraws
    out = capsys.readouterr().out
    assert (tmp_path / "pareto.png").stat().st_size > 1000 and "hypervolume" in out and "90% interval" in out


def test_evaluate_under_another_seed_redraws_the_answers(run_dir, tmp_path):
    evaluate.main([f"ckpt_path={run_dir}", "num_prompts=4", f"out={tmp_path / 'own'}"])
    evaluate.main([f"ckpt_path={run_dir}", "num_prompts=4", "seed=7", f"out={tmp_path / 'other'}"])
    own, other = (json.loads((tmp_path / d / "pareto.json").read_text()) for d in ("own", "other"))
    assert own["eval_seed"] != other["eval_seed"] == 7
    assert [p["rewards"] for p in own["points"]] != [p["rewards"] for p in other["points"]]
    assert own["pwn_choice"]["weights"] == pytest.approx(other["pwn_choice"]["weights"])  # the PWN reads the prompts only


def test_evaluate_with_draws_averages_each_prompts_answers_over_consecutive_seeds(run_dir, tmp_path):
    for name, args in {"seed7": ["seed=7"], "seed8": ["seed=8"], "both": ["seed=7", "draws=2"]}.items():
        evaluate.main([f"ckpt_path={run_dir}", "num_prompts=4", f"out={tmp_path / name}", *args])
    seed7, seed8, both = (json.loads((tmp_path / d / "pareto.json").read_text()) for d in ("seed7", "seed8", "both"))
    rewards = {name: torch.tensor([p["rewards"] for p in r["points"]]) for name, r in
               {"seed7": seed7, "seed8": seed8, "both": both}.items()}
    torch.testing.assert_close(rewards["both"], (rewards["seed7"] + rewards["seed8"]) / 2)
    torch.testing.assert_close(torch.tensor(both["pwn_choice"]["rewards"]),
                               (torch.tensor(seed7["pwn_choice"]["rewards"]) + torch.tensor(seed8["pwn_choice"]["rewards"])) / 2)
    assert both["draws"] == 2 and both["eval_seed"] == 7  # the first seed is restored after the draws
    with pytest.raises(ValueError, match="draws=0"):
        evaluate.main([f"ckpt_path={run_dir}", "draws=0"])


def test_a_run_with_draws_reports_what_evaluate_with_draws_measures(tmp_path_factory, tmp_path):
    """callbacks.pareto_eval.draws=2: the run's own final front is each prompt's rewards averaged over two answers,
    the front `evaluate draws=2` measures on its checkpoint, not the one-draw front."""
    run = tmp_path_factory.mktemp("draws_run")
    overrides = TINY + ["objective=synthetic", "conditioning=tags", "model.lora.r=4", "logger=none", "trainer.max_steps=2",
                        "callbacks.pareto_eval.every_n_steps=100", "callbacks.pareto_eval.draws=2"]
    train(compose_train(overrides, run))
    for name, draws in {"two": 2, "one": 1}.items():
        evaluate.main([f"ckpt_path={run}", "num_prompts=4", f"draws={draws}", f"out={tmp_path / name}"])
    trained, two, one = (json.loads(p.read_text()) for p in
                         (run / "pareto.json", tmp_path / "two" / "pareto.json", tmp_path / "one" / "pareto.json"))
    assert trained["draws"] == 2
    points = {name: torch.tensor([p["rewards"] for p in r["points"]]) for name, r in
              {"trained": trained, "two": two, "one": one}.items()}
    torch.testing.assert_close(points["trained"], points["two"])
    torch.testing.assert_close(torch.tensor(trained["pwn_choice"]["rewards"]), torch.tensor(two["pwn_choice"]["rewards"]))
    assert not torch.allclose(points["trained"], points["one"])


def test_evaluate_answers_in_the_precision_the_run_trained_in(tmp_path_factory, tmp_path, capsys):
    """A bf16 run's checkpoint evaluated in float32 gives another front than the run's own; evaluate takes the run's."""
    run = tmp_path_factory.mktemp("bf16_run")
    overrides = TINY + ["objective=synthetic", "conditioning=tags", "model.lora.r=4", "logger=none", "trainer.max_steps=2",
                        "callbacks.pareto_eval.every_n_steps=100", "trainer.precision=bf16-mixed",
                        "frozen_weights_dtype=bfloat16"]
    train(compose_train(overrides, run))
    evaluate.main([f"ckpt_path={run}", "num_prompts=4", f"out={tmp_path}"])
    trained, again = (json.loads(p.read_text()) for p in (run / "pareto.json", tmp_path / "pareto.json"))
    assert again["precision"].startswith("precision: bf16-mixed, frozen weights held in bfloat16")
    torch.testing.assert_close(torch.tensor([p["rewards"] for p in again["points"]]),
                               torch.tensor([p["rewards"] for p in trained["points"]]))
    module, _, cfg = load_run(str(run))  # what export reads: float32, untouched by evaluate's precision
    assert getattr(module, "inference_precision", None) is None
    assert all(p.dtype == torch.float32 for p in module.parameters())
    with forward_context(module):
        assert not torch.is_autocast_enabled("cpu")
    use_run_precision(module, cfg, module.device)  # what evaluate and generate do: the run's bf16, as its trainer had
    assert {p.dtype for p in module.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert {p.dtype for p in module.parameters() if p.requires_grad} == {torch.float32}
    with forward_context(module):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_generate_under_a_given_and_the_pwn_preference(run_dir, capsys):
    generate.main([f"ckpt_path={run_dir}", "prompt=Hi, what: is bread?", "preference=[0.8,0.2]", "max_new_tokens=4"])
    out = capsys.readouterr().out
    assert "tags: <a_to_m:0.80><n_to_z:0.20>" in out and "--- response" in out
    generate.main([f"ckpt_path={run_dir}", "prompt=Hi", "preference=auto", "num_samples=2", "max_new_tokens=4"])
    captured = capsys.readouterr()
    assert "(chosen by the PWN): a_to_m=" in captured.out and "--- response 2" in captured.out
    assert "max_prompt_length" not in captured.err  # a short prompt: no note
    generate.main([f"ckpt_path={run_dir}", "prompt=" + "word " * 3000, "preference=[0.5,0.5]", "max_new_tokens=4"])
    captured = capsys.readouterr()
    assert "--- response" in captured.out and "note: the prompt is longer than the run's algorithm.max_prompt_length" in captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["preference=[0.8,0.3]"], "preference=[0.8,0.3] sums to 1.1000"),
        (["preference=[1.0]"], "preference=[1] has 1 values but the objective has 2"),
        (["preference=[1.2,-0.2]"], "preference=[1.2,-0.2] has a negative"),
        (["preference=maybe"], "preference='maybe' must be a list"),
        (["colour=red"], "argument 'colour=red' is not key=value"),
        (["max_new_tokens=0"], "max_new_tokens=0 must be an integer >= 1"),
        (["num_samples=0"], "num_samples=0 must be an integer >= 1"),
        (["seed=abc"], "seed=abc is not an integer (or null)"),
        (["num_samples=2.5"], "num_samples=2.5 is not an integer"),
        (["greedy=maybe"], "greedy=maybe is not true or false"),
    ],
)
def test_generate_bad_input_is_one_line_naming_the_value(run_dir, args, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["generate", f"ckpt_path={run_dir}", "prompt=Hi", *args])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("arg, message", [("num_prompts=0", "num_prompts=0 must be an integer >= 1"),
                                          ("seed=abc", "seed=abc is not an integer (or null)"),
                                          ("num_prompts=true", "num_prompts=true is not an integer"),
                                          ("device=gpu", "device='gpu' is not a device; give device=cpu, cuda, cuda:N or auto"),
                                          ("draws=0", "draws=0 must be an integer >= 1"),
                                          ("num_points=1", "num_points=1 must be an integer >= 2")])
def test_evaluate_bad_sizes_are_one_line_naming_the_value(run_dir, arg, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["evaluate", f"ckpt_path={run_dir}", arg])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def test_a_cuda_device_this_machine_lacks_is_refused_by_name(monkeypatch):
    from meal_pl.restore import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device=cuda:1: this machine's torch sees no CUDA device; give device=cpu"):
        resolve_device("cuda:1")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"device=meta: meal-pl's checkpoint commands run on cpu or cuda"):
        resolve_device("meta")


def test_missing_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["evaluate", f"ckpt_path={tmp_path}/nope.ckpt"])
    with pytest.raises(SystemExit):
        run_cli(evaluate.main)
    assert "nope.ckpt" in capsys.readouterr().err


def test_export_refuses_a_file_or_a_run_directory_as_out(run_dir, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "model.bin"
    a_file.write_text("keep me")
    for out, message in ((a_file, "is a file; export writes a directory"), (run_dir, "is a training run's directory")):
        monkeypatch.setattr(sys, "argv", ["export", f"ckpt_path={run_dir}", f"out={out}"])
        with pytest.raises(SystemExit) as exit_info:
            run_cli(export.main)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1
    assert a_file.read_text() == "keep me" and not (run_dir / "meal.json").exists()


def test_export_reloads_with_transformers(run_dir, tmp_path):
    out = tmp_path / "export"
    export.main([f"ckpt_path={run_dir}", f"out={out}"])
    module, _, _ = load_run(str(run_dir))
    tokenizer = AutoTokenizer.from_pretrained(out)
    tag = "<a_to_m:0.80>"
    tag_id = tokenizer.convert_tokens_to_ids(tag)
    assert tag_id == module.tokenizer.convert_tokens_to_ids(tag) and tokenizer.decode([tag_id]) == tag
    typed = tokenizer(f"Hello {module.conditioner.format(torch.tensor([[0.8, 0.2]]))[0]}", add_special_tokens=False)["input_ids"]
    assert not set(module.conditioner.token_ids.flatten().tolist()) & set(typed)  # typed tags stay text here too
    ids = torch.cat([tokenizer(["Hello there"], return_tensors="pt")["input_ids"],
                     module.conditioner.tag_ids(torch.tensor([[0.8, 0.2]]))], 1)
    policy = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():  # merged LoRA == the adapted policy
        assert torch.allclose(policy(input_ids=ids).logits, module.policy(input_ids=ids).logits, atol=1e-4)
        reference = AutoModelForCausalLM.from_pretrained(out / "reference")
        with module.reference() as ref:
            assert torch.allclose(reference(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-4)
    meta = json.loads((out / "meal.json").read_text())
    pwn = PreferenceWeightNet(**meta["pwn"]["config"])
    pwn.load_state_dict(torch.load(out / meta["pwn"]["file"]))
    features = torch.randn(3, meta["pwn"]["config"]["feature_dim"])
    assert torch.allclose(pwn(features), module.pwn(features))
    assert meta["objectives"] == ["a_to_m", "n_to_z"] and meta["example_tags"] == "<a_to_m:0.50><n_to_z:0.50>"


def test_evaluate_under_another_judge_rescores_only_that_objective(tmp_path_factory, tmp_path):
    """judge=harmless=DIR: the same answers, the harmless objective scored by DIR's reward model."""
    from meal_pl.reward_model.head import load_head, save_head
    from meal_pl.rewards.preference_head import default_harm_model_path

    run = tmp_path_factory.mktemp("hh_run")  # the default objective: helpful_harmless, its harm model from a directory
    overrides = TINY + ["logger=none", "trainer.max_steps=1", "callbacks.pareto_eval.every_n_steps=100",
                        "callbacks.pareto_eval.num_prompts=4", "callbacks.pareto_eval.num_points=3"]
    train(compose_train(overrides, run))
    shipped, config = load_head(default_harm_model_path())
    with torch.no_grad():
        shipped.weight.neg_()  # a judge that prefers what the shipped model dislikes
    save_head(tmp_path / "flipped", shipped, config)
    own, same, flipped = tmp_path / "own", tmp_path / "same", tmp_path / "flipped_eval"
    evaluate.main([f"ckpt_path={run}", "num_prompts=4", "num_points=3", f"out={own}"])
    evaluate.main([f"ckpt_path={run}", "num_prompts=4", "num_points=3", f"out={same}",
                   f"judge=harmless={default_harm_model_path()}"])
    evaluate.main([f"ckpt_path={run}", "num_prompts=4", "num_points=3", f"out={flipped}",
                   f"judge=harmless={tmp_path / 'flipped'}"])
    points = {name: torch.tensor([p["rewards"] for p in json.loads((d / "pareto.json").read_text())["points"]])
              for name, d in (("own", own), ("same", same), ("flipped", flipped))}
    torch.testing.assert_close(points["same"], points["own"])  # the run's own judge: the same front
    torch.testing.assert_close(points["flipped"][:, 0], points["own"][:, 0])  # helpful untouched
    assert not torch.allclose(points["flipped"][:, 1], points["own"][:, 1])
    assert json.loads((flipped / "pareto.json").read_text())["judge"] == {"harmless": str((tmp_path / "flipped").resolve())}


def test_judge_names_what_is_wrong(run_dir, tmp_path):
    with pytest.raises(ValueError, match=r"judge='harmless' must be OBJECTIVE=DIR"):
        evaluate.main([f"ckpt_path={run_dir}", "judge=harmless"])
    with pytest.raises(ValueError, match=r"no reward 'harmless' read from a directory .*\['a_to_m', 'n_to_z'\]"):
        evaluate.main([f"ckpt_path={run_dir}", f"judge=harmless={tmp_path}"])


def test_evaluate_and_generate_default_to_the_device_torch_sees():
    from meal_pl.evaluate import EvaluateArgs
    from meal_pl.generate import GenerateArgs
    from meal_pl.restore import resolve_device

    assert EvaluateArgs().device == GenerateArgs().device == "auto"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
