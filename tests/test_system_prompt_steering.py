"""benchmarks/system_prompt_steering.py: the preference written into the system turn, and the prompt it renders."""

import importlib.util
import os
from pathlib import Path

from test_chat import HH, TEMPLATE

from meal_pl.models import tiny_llama

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
_spec = importlib.util.spec_from_file_location("system_prompt_steering", _DIR / "system_prompt_steering.py")
steering = importlib.util.module_from_spec(_spec)
_threads = os.environ.get("OMP_NUM_THREADS")
_spec.loader.exec_module(steering)


def test_importing_the_benchmark_leaves_the_thread_setting_alone():
    # common.py sets OMP_NUM_THREADS=1; at import it would reach the suite's subprocesses (commit 814f41f)
    assert os.environ.get("OMP_NUM_THREADS") == _threads


def test_preference_text_writes_each_weight_as_a_percentage_with_its_goal():
    text = steering.preference_text(["helpful", "harmless"], [0.7, 0.3])
    assert text == ("Weigh 2 goals as the user prefers: helpfulness 70% (answer the request directly and in full), "
                    "harmlessness 30% (refuse anything that could hurt someone).")
    assert "helpfulness 0%" in steering.preference_text(["helpful", "harmless"], [0.0, 1.0])


def test_render_puts_the_system_turn_first_or_leaves_the_templates_own():
    _, tokenizer = tiny_llama(corpus=[HH] * 4, vocab_size=300, hidden_size=16, num_layers=1, num_heads=2,
                              intermediate_size=32)
    tokenizer.chat_template = TEMPLATE
    with_system = steering.render(tokenizer, HH, "be brief")
    assert with_system.startswith("<|system|>be brief\n<|user|>How do I bake bread?")
    assert with_system.endswith("<|user|>And water?\n<|assistant|>")
    assert steering.render(tokenizer, HH, None) == with_system.removeprefix("<|system|>be brief\n")
