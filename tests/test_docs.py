"""Every citation of docs/design.md in the code, tests, experiments and docs names a section
that exists: by number ("docs/design.md, section 4", "DESIGN.md §2", "DESIGN.md s3") or by
quoted title ('docs/design.md, "Rollout"', 'docs/design.md ("The optimizer kernel")')."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"
#: Where citations live.
SOURCES = ("simfluence_jax", "experiments", "benchmarks", "tests", "notebooks", "docs")
TOP_LEVEL = ("README.md", "CONTRIBUTING.md")

HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? (.+?)\s*$", re.MULTILINE)
CITE = re.compile(r"(?:DESIGN|design)\.md")
#: What follows a citation: a section number (``section 4``, ``§2``, ``s3``, ``13``, ``3b``)
#: or a quoted title, possibly broken across lines.
NUMBER = re.compile(r"^,?\s*(?:section\s+|§\s*|s(?=\d)|)(\d+[a-z]?(?:\.\d+)?)\b")
TITLE = re.compile(r'^(?:,\s*|\s*\(|\s+)"([^"]{1,80})"')


def _sections() -> tuple[set[str], set[str]]:
    found = HEADING.findall(DESIGN.read_text())
    return {n for n, _ in found}, {title for _, title in found}


def _files() -> list[Path]:
    out = [ROOT / name for name in TOP_LEVEL]
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".md", ".ipynb", ".gin") and path != DESIGN:
                out.append(path)
    return out


def _citations() -> list[tuple[str, str, str]]:
    """``(file:line, "number" or "title", what is cited)`` of every citation that names a
    section."""
    found = []
    for path in _files():
        text = path.read_text()
        for match in CITE.finditer(text):
            rest = text[match.end() : match.end() + 200]
            where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, match.start()) + 1}"
            if number := NUMBER.match(rest):
                found.append((where, "number", number.group(1)))
            elif title := TITLE.match(rest):
                found.append((where, "title", " ".join(title.group(1).split())))
    return found


def test_design_has_numbered_sections_in_order():
    numbers, titles = _sections()
    top = sorted(int(n) for n in numbers if "." not in n)
    assert top == list(range(1, len(top) + 1)) and len(top) >= 6, top
    assert {"Fitting", "Rollout", "Metrics", "Attribution", "The optimizer kernel"} <= titles


def test_every_cited_section_exists():
    numbers, titles = _sections()
    cited = _citations()
    # The scan finds citations of both kinds (it would pass vacuously otherwise).
    assert sum(kind == "number" for _, kind, _ in cited) >= 5
    assert sum(kind == "title" for _, kind, _ in cited) >= 3
    bad = [
        f"{where} cites section {what!r}"
        for where, kind, what in cited
        if what not in (numbers if kind == "number" else titles)
    ]
    assert not bad, "docs/design.md has no such section: " + "; ".join(bad)


def test_a_missing_section_is_caught():
    numbers, titles = _sections()
    assert "13" not in numbers and "3b" not in numbers
    assert NUMBER.match(" 13):").group(1) == "13" and NUMBER.match(" §2)").group(1) == "2"
    assert NUMBER.match(" s3)").group(1) == "3" and NUMBER.match(", section 3b").group(1) == "3b"
    title = TITLE.match(', "The filter\n    kernel")').group(1)
    assert title.split() == ["The", "filter", "kernel"] and TITLE.match(' ("Fitting")')
    assert not TITLE.match('"\nX = "y"')  # the end of a string naming the file
