"""Docs that cannot rot silently: every relative link in README.md and docs/ resolves (its #section too), and every documented
`python -m meal_pl.<app> ...` command composes (Hydra apps) or names only known arguments (the checkpoint CLIs)."""

from __future__ import annotations

import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"python -m (meal_pl\.[\w.]+)([^`\n|;&#]*)")
HYDRA_APPS = {"meal_pl.train": "train", "meal_pl.bench": "bench", "meal_pl.reward_model": "reward_model",
              "meal_pl.warm_start": "warm_start_stage"}


def prose(page: Path) -> str:
    """The page without its code blocks: they hold no links, and a `# comment` there is no heading."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.S)


def links(page: Path) -> list[str]:
    text = prose(page)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(app, its arguments) of every documented command; shell quoting undone."""
    found = []
    for app, rest in COMMAND.findall(text):
        rest = re.sub(r"<[\w ]+>", "PLACEHOLDER", rest)  # `<run>` stands for a path
        try:
            args = shlex.split(rest)
        except ValueError:  # an unbalanced quote cut by the pattern: take the words as they are
            args = rest.split()
        # `[key=value]` in a usage line marks an optional argument
        found.append((app, [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in args]))
    return found


def slug(heading: str) -> str:
    """A heading's anchor as GitHub writes it: lower case, punctuation but hyphens dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", prose(page), flags=re.M)}


def broken_anchors(page: Path) -> list[str]:
    """Links whose #section names no heading of the Markdown page they point at."""
    headings: dict[Path, set[str]] = {}  # each linked page read once
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z]+:", target) or "#" not in target:
            continue
        file, section = target.split("#", 1)
        linked = page.parent / file if file else page
        if linked.suffix == ".md" and linked.exists():
            if linked not in headings:
                headings[linked] = anchors(linked)
            if section not in headings[linked]:
                broken.append(target)
    return broken


def documented_commands() -> list[tuple[str, str, list[str]]]:
    return [(page.name, app, args) for page in PAGES for app, args in commands(page.read_text())]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = [t for t in links(page) if not (page.parent / t.split("#")[0]).exists()]
    assert not broken, f"{page.name}: broken links {broken}"
    missing = broken_anchors(page)
    assert not missing, f"{page.name}: links to sections that do not exist {missing}"


def check_command(app: str, args: list[str]) -> None:
    """Compose a Hydra app's overrides (the first value of a sweep), or check a CLI's `key=value` names."""
    if app in HYDRA_APPS:
        kept = [a for a in args if "=" in a and not a.startswith(("-", "hydra."))]
        overrides = []
        for o in OverridesParser.create().parse_overrides(kept):
            value = o.value()
            first = value.list[0] if isinstance(value, ChoiceSweep) else o.get_value_element_as_str()
            if isinstance(value, ChoiceSweep):
                first = o.get_key_element() + "=" + str(first)
            else:
                first = o.input_line
            overrides.append(first)
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
                compose(HYDRA_APPS[app], overrides=overrides)
        finally:
            GlobalHydra.instance().clear()
        return
    module = __import__(app, fromlist=["main"])
    args_type = next(v for k, v in vars(module).items() if k.endswith("Args") and isinstance(v, type))
    known = {f.name for f in fields(args_type)}
    unknown = [a.split("=")[0] for a in args if "=" in a and a.split("=")[0] not in known]
    assert not unknown, f"python -m {app}: unknown arguments {unknown}"


@pytest.mark.parametrize("page, app, args", documented_commands(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_documented_command_composes(page, app, args):
    check_command(app, args)


def test_the_checks_fail_on_a_broken_link_and_a_renamed_key(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[gone](missing.md) and [ok](page.md)")
    assert links(page) == ["missing.md", "page.md"] and not (tmp_path / "missing.md").exists()
    page.write_text("# A `key`: its section (v2)\n[here](#a-key-its-section-v2) [there](page.md#renamed)")
    assert broken_anchors(page) == ["page.md#renamed"]
    (app, args), = commands("`python -m meal_pl.train algorithm.sampler.num_sample=3`")
    with pytest.raises(Exception, match="num_sample"):
        check_command(app, args)
    with pytest.raises(AssertionError, match="colour"):
        check_command(*commands("python -m meal_pl.generate ckpt_path=x colour=red")[0])
