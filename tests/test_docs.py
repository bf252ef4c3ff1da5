"""The documentation holds together: links resolve, the README stays short and starts with its two commands.

Checked files: ``README.md``, ``docs/*.md`` and ``benchmarks/results/README.md``.
Every relative markdown link ``[text](target)`` (images too) must name an
existing file or folder, and a ``#anchor`` must match a heading of the target
(GitHub's slugs). http(s) and mailto links are not followed.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_LINES = 200
SWAP_WITHIN_LINES = 60
COMMANDS = ["bash scripts/quickstart.sh", "bash scripts/test.sh"]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) or [text](target "title"); the text may hold `code` but no brackets.
_LINK = re.compile(r"\[[^\]\[]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_EXTERNAL = ("http://", "https://", "mailto:")


def doc_files() -> list[Path]:
    """The markdown files this test checks."""
    files = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "results" / "README.md"]
    return [f for f in files if f.exists()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark
            elif mark[0] == fence[0] and len(mark) >= len(fence):
                fence = None
            continue
        if fence is None:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens.

    >>> slug("Measure: `loader bench` and `benchmarks/`")
    'measure-loader-bench-and-benchmarks'
    >>> slug("Where the time goes (CPU)")
    'where-the-time-goes-cpu'
    """
    text = _INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = text.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of ``path`` (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        k = seen.get(base, 0)
        seen[base] = k + 1
        out.add(base if k == 0 else f"{base}-{k}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every markdown link in ``path`` outside code (fenced or inline)."""
    out = []
    for n, line in prose_lines(path.read_text(encoding="utf-8")):
        line = _INLINE_CODE.sub("", line)
        out.extend((n, m.group(1)) for m in _LINK.finditer(line))
    return out


def broken_links(path: Path) -> list[str]:
    """One message per relative link of ``path`` that does not resolve (file, then anchor)."""
    bad = []
    for n, target in links(path):
        if target.startswith(_EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.name}:{n}: {target}"
        if not dest.exists():
            bad.append(f"{where}: no such file {dest}")
        elif anchor and (dest.is_dir() or dest.suffix != ".md"):
            bad.append(f"{where}: anchor on a file without headings")
        elif anchor and anchor not in anchors(dest):
            bad.append(f"{where}: no heading with anchor #{anchor} in {dest.name}")
    return bad


def fenced_blocks(text: str) -> list[list[str]]:
    """The lines inside each fenced code block, in order."""
    blocks, current, fence = [], [], None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m and fence is None:
            fence, current = m.group(1), []
        elif m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
            blocks.append(current)
            fence = None
        elif fence is not None:
            current.append(line)
    return blocks


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(path):
    assert broken_links(path) == []


def test_docs_exist():
    names = {p.name for p in doc_files()}
    for name in ("README.md", "format.md", "imageloader.md", "performance.md", "benchmarks.md", "install.md"):
        assert name in names, f"missing {name}"


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES}): move depth to docs/"


def test_readme_starts_with_the_two_commands():
    blocks = fenced_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no fenced code block"
    commands = [line.split("#", 1)[0].strip() for line in blocks[0]]
    assert [c for c in commands if c] == COMMANDS


def test_readme_shows_the_swap_early():
    head = README.read_text(encoding="utf-8").splitlines()[:SWAP_WITHIN_LINES]
    text = "\n".join(head)
    assert "ImageLoader(" in text, f"the before/after swap must start within the first {SWAP_WITHIN_LINES} lines"
    assert "DataLoader(" in text, "the 'before' (torch DataLoader) must come with the swap"


# -- the checker itself can fail ----------------------------------------------


def test_checker_catches_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Section `two`: here\n", encoding="utf-8")
    (tmp_path / "exists.txt").write_text("x\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "Good: [a](other.md), [b](other.md#section-two-here), [c](#page), ![img](exists.txt),\n"
        "[d](https://example.com/missing), [e](mailto:someone@example.com).\n"
        "Bad: [f](missing.md) and [g](other.md#no-such-heading) and [h](#nowhere).\n"
        "`[not a link](inline-code.md)`\n\n"
        "```\n[not a link](fenced.md)\n# not a heading\n```\n",
        encoding="utf-8")
    bad = broken_links(page)
    assert len(bad) == 3, bad
    assert "missing.md" in bad[0]
    assert "#no-such-heading" in bad[1]
    assert "#nowhere" in bad[2]
    assert "not-a-heading" not in anchors(page)


def test_slugs_number_repeated_headings(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Notes\n## Notes\n## Where the time goes (CPU)\n", encoding="utf-8")
    assert anchors(page) == {"notes", "notes-1", "where-the-time-goes-cpu"}


def test_first_block_check_catches_a_third_command():
    text = "# x\n\n```bash\nbash scripts/quickstart.sh\nbash scripts/test.sh\nmake all\n```\n"
    commands = [line.split("#", 1)[0].strip() for line in fenced_blocks(text)[0]]
    assert [c for c in commands if c] != COMMANDS
