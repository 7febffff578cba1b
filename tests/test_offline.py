"""meal-pl's commands run offline by default; importing meal_pl in a user's own process changes no setting."""

import os
import subprocess
import sys

import meal_pl

CHECK = "import os, meal_pl; print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TOKENIZERS_PARALLELISM'))"


def test_import_leaves_the_environment_as_it_found_it():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    out = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["None", "None"]


def test_a_command_sets_the_offline_default_and_keeps_a_users_choice(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-X", "utf8", "-m", "meal_pl.train", "seed=1"], raising=False)
    assert meal_pl._started_as_a_command()
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "pytest", "meal_pl"], raising=False)
    assert not meal_pl._started_as_a_command()
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    for user, expected in ((None, "1"), ("0", "0")):
        run_env = env | ({"HF_HUB_OFFLINE": user} if user else {})
        # `python -m meal_pl.hub`: a module of the package run as a command, importing nothing heavy
        out = subprocess.run([sys.executable, "-m", "meal_pl.hub"], env=run_env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert os.environ.get("HF_HUB_OFFLINE") is not None  # the test process itself runs offline (conftest)
        assert out.stdout.split()[:1] == [expected], out.stdout
