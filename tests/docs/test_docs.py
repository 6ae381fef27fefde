"""The README stays a short user's guide and the pages under docs/ hold the rest: length, words, links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
TEXTS = [README, *PAGES]
MAX_README_LINES = 400

# Words that tell the project's development history instead of what the user gets.
HISTORY = re.compile(
    r"\b(round|session|issue)s?\b|\bthis round\b|\buntil now\b|\bearlier versions?\b|\bwe fixed\b", re.IGNORECASE
)
# Phrases where such a word is not history (e.g. another project's issue number); keep this list short.
NOT_HISTORY = ("small round one",)  # a shape: docs/studies/lone-cell.md, what a cell's sliver of a circle looks like


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """The text without fenced code blocks (a code comment is not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", _prose(path.read_text()), flags=re.M)}


def _links(path: Path) -> list[str]:
    """Relative link targets (``[text](target)`` and images) of one page."""
    targets = re.findall(r"\]\(([^)\s]+)\)", _prose(path.read_text()))
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def test_the_readme_is_at_most_400_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move details to a page under docs/"


@pytest.mark.parametrize("path", TEXTS, ids=_name)
def test_no_development_history_words(path):
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        for phrase in NOT_HISTORY:
            line = line.replace(phrase, "")
        found += [f"{_name(path)}:{number}: {match.group(0)!r} in {line.strip()!r}" for match in HISTORY.finditer(line)]
    assert not found, "say what the user gets, not how it came about:\n" + "\n".join(found)


@pytest.mark.parametrize("path", TEXTS, ids=_name)
def test_every_relative_link_resolves(path):
    broken = []
    for target in _links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading with that anchor in {_name(resolved)}")
    assert not broken, f"{_name(path)}: " + "; ".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), [README.resolve()]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for target in _links(page):
            file = target.partition("#")[0]
            linked = (page.parent / file).resolve()
            if file.endswith(".md") and linked.exists():
                todo.append(linked)
    unreachable = [_name(page) for page in PAGES if page.resolve() not in seen]
    assert not unreachable, f"pages no link leads to from README.md: {unreachable}"


def test_each_study_is_titled_by_its_subject_and_linked_from_the_readme():
    studies = sorted((ROOT / "docs" / "studies").glob("*.md"))
    assert studies
    readme = README.read_text()
    for study in studies:
        title = study.read_text().splitlines()[0]
        assert title.startswith("# ") and len(title) > 10, f"{_name(study)} starts with a one-line title: {title!r}"
        assert f"[{title[2:]}](docs/studies/{study.name})" in readme, f"README.md links {_name(study)} by its title"
