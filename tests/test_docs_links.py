"""The documentation hangs together: README.md stays a front door of at most 20,000 bytes,
and every relative link or image in README.md and docs/**/*.md points to a file that exists,
every ``#anchor`` to a heading of the page it names (GitHub's anchor rules). No network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_BYTES = 20_000

# [text](target) and ![alt](target); the target ends at whitespace or ")".
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(path: Path) -> str:
    """The page's Markdown outside fenced code blocks and inline code spans."""
    kept, in_fence = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            kept.append(re.sub(r"`[^`]*`", "", line))
    return "\n".join(kept)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped,
    spaces to hyphens; a repeated heading gets -1, -2, ..."""
    found: set[str] = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if in_fence or not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in found:
            n += 1
            anchor = f"{slug}-{n}"
        found.add(anchor)
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(path))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...
    ]


def test_readme_is_a_front_door() -> None:
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, more than {README_MAX_BYTES}"


def test_anchor_rules_match_github(tmp_path: Path) -> None:
    sample = tmp_path / "sample.md"
    sample.write_text(
        "# Real machines: Flower's deployment engine\n## The c(M) audit\n"
        "```toml\n# not a heading\n```\n## A, b (c)\n## A, b (c)\n",
        encoding="utf-8",
    )
    assert anchors(sample) == {
        "real-machines-flowers-deployment-engine",
        "the-cm-audit",
        "a-b-c",
        "a-b-c-1",
    }


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [gone](missing.md) `[code](nowhere.md)`\n")
    assert relative_links(page) == ["#title", "missing.md"]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        destination = (page.parent / file_part).resolve() if file_part else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    orphans = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages not linked from README.md: {orphans}"


def test_no_page_points_outside_the_repository() -> None:
    for page in PAGES:
        for target in relative_links(page):
            destination = (page.parent / target.partition("#")[0]).resolve()
            assert destination.is_relative_to(ROOT), f"{page}: {target} leaves the repository"
