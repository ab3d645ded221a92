"""The documentation a newcomer reads: a README short enough for five minutes, with the quick start as it is run,
and links that lead to files of this repository (and to headings that exist), never outside it."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = [README, REPO / "TESTING.md", REPO / "bench" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)
UP_PATH = re.compile(r"(?<![\w./-])((?:\.\./)+[\w.@/-]*)")
DOC_PATH = re.compile(r"`(docs/[\w.-]+\.md)`")


def prose(text: str) -> str:
    """Markdown without its fenced code blocks (a link inside one is an example, not a link)."""
    return FENCE.sub("", text)


def heading_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces as hyphens, a repeated
    heading numbered."""
    anchors: set[str] = set()
    for line in prose(path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def inside_repo(path: Path) -> bool:
    return path.resolve().is_relative_to(REPO)


def link_problems(doc: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(doc.read_text())):
        if SCHEME.match(target):
            continue  # a web page (an upstream project's), not a file
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part) if file_part else doc
        if not inside_repo(linked):
            problems.append(f"{target}: outside the repository")
        elif not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            problems.append(f"{target}: no heading #{anchor} in {linked.relative_to(REPO)}")
    return problems


def test_the_readme_is_a_five_minute_read_with_the_quick_start_as_run():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [
        line.split("#")[0].strip()
        for block in re.findall(r"```bash\n(.*?)```", quick_start, re.S)
        for line in block.splitlines()
    ]
    assert commands == ["./farm render", "./farm test"]
    assert "random weights, so its output is noise" in quick_start
    assert "parallel processes" in quick_start
    assert (REPO / "farm").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_leads_to_a_file_of_the_repository(doc):
    assert link_problems(doc) == []
    named = [m for m in DOC_PATH.findall(doc.read_text()) if not (REPO / m).is_file()]
    assert named == [], f"named but missing: {named}"


@pytest.mark.parametrize("path", [*DOCS, REPO / "pyproject.toml"], ids=lambda p: str(p.relative_to(REPO)))
def test_no_path_leaves_the_repository(path):
    """Not even as text: `../x` from a file of the repository must stay in it."""
    outside = [p for p in UP_PATH.findall(path.read_text()) if not inside_repo(path.parent / p)]
    assert outside == []


def test_the_link_check_can_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A title\n\n## Some `code`, here\n")
    doc = tmp_path / "README.md"
    doc.write_text(
        "[ok](docs/a.md#some-code-here) [web](https://example.com/x) [self](#top)\n"
        "[gone](docs/b.md) [up](../shared/DESIGN.md) [bad anchor](docs/a.md#nope)\n"
        "```\n[in a code block](nowhere.md)\n```\n# Top\n"
    )
    assert link_problems(doc) == [
        "docs/b.md: no such file",
        "../shared/DESIGN.md: outside the repository",
        "docs/a.md#nope: no heading #nope in docs/a.md",
    ]
    assert UP_PATH.findall("see `../shared/crds/` and docs/../README.md") == ["../shared/crds/"]


def test_measurements_are_dated_by_date_and_device_not_by_session():
    assert not re.search(r"\bsessions?\b", (REPO / "bench" / "README.md").read_text(), re.I)
