"""meal-pl: Meta-Aligner (Meal) for multi-objective LLM alignment on Lightning + Hydra."""

import os
import sys


def _started_as_a_command() -> bool:
    """True inside `python -m meal_pl.<command>`: the package is imported while Python looks the command up, before
    the command's own imports (transformers reads HF_HUB_OFFLINE when it is first imported)."""
    argv = getattr(sys, "orig_argv", [])
    return any(flag == "-m" and i + 1 < len(argv) and argv[i + 1].split(".")[0] == "meal_pl"
               for i, flag in enumerate(argv))


# meal-pl's own commands run offline by default: with no network, every hub lookup fails at once (not after ~46 s of
# retries); a user with network opts in with HF_HUB_OFFLINE=0. Importing meal_pl in a notebook or script changes no
# setting of that process (TRL's and transformers' own hub loads stay as the user set them).
if _started_as_a_command():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"
