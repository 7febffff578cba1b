"""Command-line `key=value` overrides checked before Hydra runs: one line per mistake, naming the key.

Hydra's own report for a misspelled key spans several lines and suggests `+key` (adding the typo), and a
value of the wrong type (`seed=abc`) only fails deep inside the run with a message that names no key. Here
the config is composed once with the command line's group choices (~0.1 s) and every plain override is
looked up in it: an unknown key gets the closest valid keys (difflib), a text where the config holds a
number or a boolean gets the key and an example.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, OverrideType
from omegaconf import DictConfig, ListConfig

_ABSENT = object()


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config (containers and leaves), without resolving interpolations."""
    keys: list[str] = []
    if isinstance(cfg, DictConfig):
        for key in cfg.keys():
            full = f"{prefix}{key}"
            keys.append(full)
            child = cfg._get_node(key)
            if isinstance(child, DictConfig):
                keys += flat_keys(child, full + ".")
    return keys


def nearest(key: str, known: list[str], n: int = 3) -> list[str]:
    """The closest valid keys (difflib), only those nearly as close as the best one."""
    scored = sorted(((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in known), reverse=True)
    best = scored[0][0] if scored else 0.0
    return [k for score, k in scored[:n] if score >= max(0.6, best - 0.05)]


def _lookup(cfg: DictConfig, key: str) -> Any:
    """The raw value at a dotted key, or _ABSENT when some part of the key does not exist."""
    node: Any = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node.keys():  # `in node` is False for a mandatory ??? value
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return _ABSENT
    return node._value() if hasattr(node, "_value") and not isinstance(node, (DictConfig, ListConfig)) else node


def _values(override: Override) -> list[Any] | None:
    """The value(s) an override sets: one, or each choice of a sweep; None for ranges, globs and the like."""
    value = override.value()
    if isinstance(value, ChoiceSweep):
        return list(value.list)
    if override.is_sweep_override():
        return None
    return [value]


def _type_problem(key: str, default: Any, value: Any) -> str | None:
    """Why `value` cannot stand where the config holds `default`, or None."""
    if value is None or default is None or (isinstance(value, str) and value.startswith("${")):
        return None
    example = f"{key}={str(default).lower() if isinstance(default, bool) else default}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            return f"{key}={value} is not a boolean; use true or false (e.g. {example})"
    elif isinstance(default, int):
        # A float can be legitimate where the default is an int (Lightning's limit_*_batches take fractions).
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{key}={value} is not a number; give an integer (e.g. {example})"
    elif isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f"{key}={value} is not a number; give a number such as 1e-3 or 0.5 (e.g. {example})"
    return None


def check_key_overrides(args: list[str], conf_dir: Path, config_name: str = "train") -> None:
    """ValueError (one line) for an unknown key or a value of the wrong type among `key=value` arguments.

    Group choices (`objective=...`) are checked by runs.check_group_overrides; `hydra.*`, `+key` (add) and
    `~key` (delete) overrides are left to Hydra. Whatever cannot be parsed or composed here is left to Hydra too.
    """
    candidates = [a for a in args if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:
        return
    groups, keys = [], []
    for override in overrides:
        name = override.key_or_group
        if name.startswith("hydra") or override.package is not None:
            continue
        if (conf_dir / name).is_dir():
            values = _values(override)
            if values and not override.is_delete():
                groups.append(f"{override.get_key_element()}={values[0]}")
        elif override.type == OverrideType.CHANGE:
            keys.append(override)
    if not keys:
        return
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=groups)
    except Exception:  # e.g. a plugin's group that is not installed: Hydra reports it
        return
    finally:
        GlobalHydra.instance().clear()
    known: list[str] | None = None
    for override in keys:
        key = override.key_or_group
        default = _lookup(cfg, key)
        if default is _ABSENT:
            known = known if known is not None else flat_keys(cfg)
            close = nearest(key, known)
            hint = f"did you mean {' or '.join(close)}?" if close else f"see `python -m meal_pl.{config_name} --cfg job` for every key"
            raise ValueError(f"{key} is not a config key; {hint} (prefix it with + to add a new key on purpose)")
        if isinstance(default, (DictConfig, ListConfig)):
            continue
        for value in _values(override) or []:
            problem = _type_problem(key, default, value)
            if problem:
                raise ValueError(problem)
