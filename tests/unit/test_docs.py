"""The documentation matches the code: every CLI flag is documented, every docs page is reachable
from the README, and every relative link points at a file that exists."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from knnspark.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
#: The README is for users; measurements and internals live in docs/.
README_MAX_LINES = 250


def _flags() -> dict[str, list[str]]:
    """Every ``--flag`` of every ``knnspark`` sub-command, by command."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: [o for a in p._actions for o in a.option_strings if o.startswith("--")]
        for name, p in sub.choices.items()
    }


def _links(path: Path) -> list[str]:
    """Relative link targets of a markdown file (no URLs, no in-page anchors), anchor dropped."""
    targets = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t[0] != "#"]


@pytest.mark.parametrize("command", ["run", "query", "generate", "report", "bench"])
def test_every_cli_flag_is_documented(command: str) -> None:
    text = README.read_text() + CONFIGURATION.read_text()
    documented = set(re.findall(r"`(--[a-z0-9-]+)", text))
    missing = [f for f in _flags()[command] if f != "--help" and f not in documented]
    assert not missing, f"knnspark {command}: document {missing} in docs/configuration.md"


def test_the_readme_is_short_and_every_docs_page_is_reachable_from_it() -> None:
    n_lines = len(README.read_text().splitlines())
    assert n_lines <= README_MAX_LINES, f"README has {n_lines} lines; move details to docs/"
    pages = {p.resolve() for p in (ROOT / "docs").glob("*.md")}
    seen, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        for target in _links(page):
            dest = (page.parent / target).resolve()
            if dest.suffix == ".md" and dest not in seen and dest.exists():
                seen.add(dest)
                todo.append(dest)
    assert pages <= seen, f"not reachable from the README: {sorted(p.name for p in pages - seen)}"


PAGES = ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    path = README if page == "README.md" else ROOT / "docs" / page
    broken = [t for t in _links(path) if t and not (path.parent / t).exists()]
    assert not broken, f"{page}: broken links {broken}"


def test_every_parameter_is_declared_once_and_documented() -> None:
    """Each KnnConfig field has its group and help in config.PARAMETERS (the CLI's flags are
    made from it), and docs/configuration.md names it, as a flag or as a TOML key."""
    import dataclasses

    from knnspark.config import GROUPS, PARAMETERS, KnnConfig

    fields = [f.name for f in dataclasses.fields(KnnConfig)]
    assert sorted(PARAMETERS) == sorted(fields)
    assert {p.group for p in PARAMETERS.values()} <= set(GROUPS)
    text = CONFIGURATION.read_text()
    missing = [
        name
        for name in fields
        if f"`{name}`" not in text and f"`--{name.replace('_', '-')}`" not in text
    ]
    assert not missing, f"document {missing} in docs/configuration.md"
    flags = set(_flags()["run"])
    for name, param in PARAMETERS.items():
        assert (f"--{name.replace('_', '-')}" in flags) == param.flag, name


def test_every_test_the_docs_name_exists() -> None:
    """A guarantee links the test that proves it: the file, and the test where one is named."""
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "deploy" / "README.md"]:
        for path, name in re.findall(r"(tests/[\w/]+\.py)(?:::(\w+))?", page.read_text()):
            file = ROOT / path
            if not file.is_file() or (name and f"def {name}(" not in file.read_text()):
                broken.append(f"{page.name}: {path}{'::' + name if name else ''}")
    assert not broken, broken
