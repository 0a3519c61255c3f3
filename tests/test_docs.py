"""Citations point at what users have: no file outside the repository, and every
``docs/theory.md section N.M`` or ``docs/theory.md#anchor`` cited in code and docs exists there."""

from __future__ import annotations

import re
from pathlib import Path

import proofs_check

ROOT = Path(__file__).resolve().parent.parent
THEORY = ROOT / "docs" / "theory.md"
SCANNED_DIRS = ("pathkl", "proofs_check", "studies", "benchmarks", "tests", "docs", "paper_figs")
SCANNED_FILES = ("README.md", "pyproject.toml")
SUFFIXES = {".py", ".md", ".toml", ".txt", ".cfg", ".ini", ".yaml", ".yml"}

# Files the package's users do not have (the developers' design notes and paper summaries). The
# names are assembled so that this file does not match its own pattern.
STALE = re.compile(r"\b(?:DESIGN|NOTES)\.md\b|\b" + "papers" + r"/")
SECTIONS = re.compile(
    r"docs/theory\.md,?\s+sections?\s+(\d+(?:\.\d+)*(?:\s*(?:,|and|-)\s*\d+(?:\.\d+)*)*)")
ANCHOR = re.compile(r"(?:docs/)?theory\.md#([\w-]+)")
HEADING = re.compile(r"^#{2,4} (\d+(?:\.\d+)*)\.? ", re.MULTILINE)


def scanned_files() -> list[Path]:
    files = [ROOT / name for name in SCANNED_FILES]
    for folder in SCANNED_DIRS:
        files += [p for p in sorted((ROOT / folder).rglob("*"))
                  if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts]
    return [p for p in files if p.resolve() != Path(__file__).resolve()]


def stale_mentions(text: str) -> list[str]:
    return [m.group(0) for m in STALE.finditer(text)]


def numbered_sections(markdown: str) -> set[str]:
    return set(HEADING.findall(markdown))


def anchors(markdown: str) -> set[str]:
    return set(re.findall(r'<a id="([\w-]+)"></a>', markdown))


def cited_sections(text: str) -> list[str]:
    return [n for m in SECTIONS.finditer(text) for n in re.findall(r"\d+(?:\.\d+)*", m.group(1))]


def test_no_citation_of_files_users_do_not_have():
    offenders = [f"{p.relative_to(ROOT)}: {hit}" for p in scanned_files()
                 for hit in stale_mentions(p.read_text(encoding="utf-8", errors="replace"))]
    assert not offenders, "cite docs/theory.md or the paper and equation instead:\n" + "\n".join(offenders)


def test_every_cited_section_and_anchor_exists():
    theory = THEORY.read_text()
    sections, ids = numbered_sections(theory), anchors(theory)
    cited, missing = 0, []
    for p in scanned_files():
        text = p.read_text(encoding="utf-8", errors="replace")
        for number in cited_sections(text):
            cited += 1
            if number not in sections:
                missing.append(f"{p.relative_to(ROOT)}: section {number}")
        for anchor in ANCHOR.findall(text):
            cited += 1
            if anchor not in ids:
                missing.append(f"{p.relative_to(ROOT)}: #{anchor}")
    # The page's own table of contents and cross-links.
    for anchor in re.findall(r"\]\(#([\w-]+)\)", theory):
        if anchor not in ids:
            missing.append(f"docs/theory.md: #{anchor}")
    assert not missing, "\n".join(missing)
    assert cited >= 30, f"only {cited} citations of docs/theory.md found: is the pattern still right?"


def test_the_checks_can_fail():
    """The patterns catch what they are for (a check that cannot fail is not evidence)."""
    assert stale_mentions("see " + "DESIGN" + ".md section 2") and stale_mentions("../shared/" + "papers/x.md")
    assert not stale_mentions("paper_figs/README.md, docs/theory.md")
    assert cited_sections("(docs/theory.md sections 2.2, 3.3 and\n    4.4)") == ["2.2", "3.3", "4.4"]
    assert "99.9" not in numbered_sections(THEORY.read_text())


def test_theory_links_resolve_and_readme_links_it():
    theory = THEORY.read_text()
    for target in re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]+)?\)", theory):
        assert (THEORY.parent / target).is_file(), target
    assert "](docs/theory.md)" in (ROOT / "README.md").read_text()


def test_claims_readme_states_each_registered_source():
    """proofs_check/README.md's table gives each claim's source exactly as the registry does."""
    readme = (ROOT / "proofs_check" / "README.md").read_text()
    for c in proofs_check.all_claims():
        assert f"| `{c.id}` | {c.source} | {c.method} |" in readme, c.id
