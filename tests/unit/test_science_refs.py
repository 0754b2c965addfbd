"""Every citation of the science reference resolves inside the repository (docs/science.md), by section."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCIENCE = REPO / "docs" / "science.md"
SCANNED = (
    "src",
    "components",
    "pipelines",
    "benchmarks",
    "configs",
    "docs",
    "tests",
    "README.md",
    "Makefile",
)
CITE = re.compile(r"(\S*science\.md)((?:[ ,]*§ ?\d+(?:\.\d+)?)*)")


def _files() -> list[Path]:
    out: list[Path] = []
    for name in SCANNED:
        p = REPO / name
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [
                f for f in p.rglob("*") if f.is_file() and f.suffix in {".py", ".md", ".yaml", ".json", ""}
            ]
    return [f for f in out if f != SCIENCE and f != Path(__file__).resolve()]


def _sections() -> set[str]:
    heads = re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", SCIENCE.read_text(), flags=re.M)
    return set(heads)


def test_science_reference_is_in_the_repository() -> None:
    text = SCIENCE.read_text()
    assert "## References" in text
    assert {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"} <= _sections()


def test_every_citation_points_at_docs_science_md_and_its_section_exists() -> None:
    sections = _sections()
    bad: list[str] = []
    n = 0
    for f in _files():
        try:
            text = f.read_text()
        except UnicodeDecodeError:
            continue
        for m in CITE.finditer(text):
            n += 1
            where = f"{f.relative_to(REPO)}: {m.group(0)}"
            if not m.group(1).endswith("docs/science.md") or "shared" in m.group(1):
                bad.append(f"{where} (not docs/science.md)")
            for sec in re.findall(r"§ ?(\d+(?:\.\d+)?)", m.group(2)):
                if sec not in sections:
                    bad.append(f"{where} (no section {sec})")
    assert n > 40  # the code and docs cite it throughout
    assert bad == []
