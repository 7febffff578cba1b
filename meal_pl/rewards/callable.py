"""User-supplied python callables and a small rule-based reward, pluggable by config."""

import importlib
import inspect
from collections.abc import Callable


def import_callable(path: str) -> Callable:
    """Resolve "pkg.module:function" or "pkg.module.function" to the object it names."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"expected 'pkg.module:function' or 'pkg.module.function', got {path!r}")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):  # allows "pkg.module:Class.method"
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{path!r} resolves to a non-callable {type(obj).__name__}")
    return obj


class PythonReward:
    """Call `fn(prompts=..., completions=..., **kwargs)` by keyword, as TRL calls its reward functions (so a TRL reward
    function such as `f(completions, **kwargs)` works unchanged), where `fn` is named by a dotted path in the config.
    A function whose parameters have other names, `f(p, c)`, is called positionally (prompts, completions) as before."""

    def __init__(self, fn: str, **kwargs) -> None:
        self.fn_path = fn
        self.fn = import_callable(fn)
        self.kwargs = kwargs
        self.by_keyword = call_by_keyword(self.fn, fn, kwargs)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        if self.by_keyword:
            return list(self.fn(prompts=prompts, completions=completions, **self.kwargs))
        return list(self.fn(prompts, completions, **self.kwargs))


def call_by_keyword(fn: Callable, path: str, kwargs: dict) -> bool:
    """True where `fn` takes prompts= and completions= by keyword (TRL's convention), False where it takes them as
    its first two positional parameters; refused in one line where it takes neither."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: call it as TRL would
        return True
    try:
        signature.bind(prompts=[], completions=[], **kwargs)
        return True
    except TypeError:
        pass
    try:
        signature.bind([], [], **kwargs)
        return False
    except TypeError as err:
        raise ValueError(f"reward function {path} cannot be called as fn(prompts=..., completions=..., **kwargs) (TRL's "
                         f"reward functions) nor fn(prompts, completions, **kwargs): {err}; write it as "
                         "def reward(completions, prompts=None, **kwargs) -> list[float]") from None


class LengthReward:
    """Rule-based example: 1 - |n_words - target| / target, clipped at 0 (1 exactly at the target)."""

    def __init__(self, target_words: int) -> None:
        if target_words < 1:
            raise ValueError(f"target_words must be >= 1, got {target_words}")
        self.target_words = target_words

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        t = self.target_words
        return [max(0.0, 1.0 - abs(len(c.split()) - t) / t) for c in completions]
