"""Hub names in config: loads that fail at once, naming the config key, when the hub is offline (the default)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (meal-pl's commands set 1 unless the user set it)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().upper() in {"1", "ON", "YES", "TRUE"}


def load_by_name(load: Callable[[str], T], key: str, name: str, fix: str) -> T:
    """`load(name)` (a from_pretrained); offline with `name` neither a directory nor cached, one line naming `key`."""
    try:
        return load(name)
    except OSError as err:
        if hub_offline() and not Path(name).is_dir():
            raise RuntimeError(
                f"{key}={name!r} is not a local directory nor in the Hugging Face cache, and the hub is offline "
                f"(HF_HUB_OFFLINE=1, meal-pl's default). Fix: {fix}, or run with HF_HUB_OFFLINE=0 on a machine with network."
            ) from err
        raise


if __name__ == "__main__":
    # `python -m meal_pl.hub`: how meal-pl's commands see the hub (HF_HUB_OFFLINE, 1 unless the user set it).
    print(os.environ.get("HF_HUB_OFFLINE"), "offline" if hub_offline() else "online")
