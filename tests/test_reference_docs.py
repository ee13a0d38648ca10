"""Every reference citation can be followed inside the repository (docs/reference/README.md).

Code, tests, scripts and docs cite the reference files as ``docs/reference/8237.md §3.5``,
``docs/reference/linux-isa-dma.md §2(a)``, ``docs/reference/hil-lessons.md §3.21``,
``docs/reference/linux-isa-dma.md §3 rule 20`` or ``docs/reference/qemu-qtest.md §8 'autoinit'``.
A citation that names a file the clone does not have, a section that does not exist, or a table
row that is not in that section sends the reader nowhere, so each one is checked here.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REF_DIR = ROOT / "docs" / "reference"
REF_PREFIX = "docs/reference/"
NOTES = ("8237", "8259", "linux-isa-dma", "qemu-qtest", "hil-lessons", "devices", "labgrid", "vm")
# Built in two parts so that this file does not itself contain the path it forbids.
PRIVATE_PATH = "shared" + "/reference"

SECTION = r"\d+(?:\.\d+)*(?:\([a-z]\))?"
NAME_RE = re.compile(rf"(?P<prefix>(?:[\w.-]+/)*)(?P<name>{'|'.join(map(re.escape, NOTES))})\.md\b")
# What may follow a file name, one token at a time: sections (``§2.3, §3.2``, ``§3.20-§3.21``),
# list items (``rule 20``, ``rules 4, 5``), the word ``row(s)`` and quoted row labels.
SEP = r"(?:\s*(?:,|/|&|-|\u2013|\band\b|\bto\b)\s*|\s+)"  # \u2013: an en dash
TOKEN_RE = re.compile(
    rf"`?(?:{SEP})?(?:"
    rf"§(?P<section>{SECTION})"
    rf"|(?P<kind>rules?|variants?|items?)\s+(?P<items>\d+(?:\s*(?:,|-|\band\b)\s*\d+)*)"
    rf"|(?P<rows>rows?)\b"
    rf")"
)
LABEL_RE = re.compile(r"(?:\s*,\s*|\s+and\s+|\s+)'(?P<label>[^'\n]{1,150})'")
HEADING_RE = re.compile(rf"^(?P<hashes>#{{1,6}})\s+(?:§\s*)?(?P<id>{SECTION})(?=[\s.:)]|$)")
ITEM_ANCHOR_RE = re.compile(r"^\s*(?:[-*]|\d+\.)\s+\*\*§(?P<id>\d+(?:\.\d+)+)\b")


@dataclass
class Citation:
    path: str  #: the citing file, relative to the repository root
    line: int
    prefix: str
    name: str
    sections: list[str] = field(default_factory=list)
    items: list[tuple[str, int]] = field(default_factory=list)  #: (section, item number)
    labels: list[tuple[str, str]] = field(default_factory=list)  #: (section, quoted label)
    link_target: bool = False  #: a relative Markdown link target, ``[..](8237.md)``

    def where(self) -> str:
        return f"{self.path}:{self.line}: {self.prefix}{self.name}.md"


def tracked_files() -> list[Path]:
    """The repository's tracked text files (git ls-files), or every file when git is absent."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", "__pycache__", ".venv", ".venv-ci", ".pytest_cache", ".mypy_cache"}
        paths = [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.parts)]
    texts = []
    for p in paths:
        try:
            p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(p)
    return texts


def parse_citations(text: str, path: str) -> list[Citation]:
    cites = []
    for m in NAME_RE.finditer(text):
        c = Citation(path, text.count("\n", 0, m.start()) + 1, m["prefix"], m["name"])
        c.link_target = text[max(0, m.start() - 2) : m.start()] == "]("
        pos, current = m.end(), None
        while True:
            t = TOKEN_RE.match(text, pos)
            if t is not None and t.end() > pos:
                pos = t.end()
                if t["section"]:
                    current = t["section"]
                    c.sections.append(current)
                elif t["kind"] and current is not None:
                    for n in re.findall(r"\d+", t["items"]):
                        c.items.append((current, int(n)))
                continue
            lab = LABEL_RE.match(text, pos)
            if lab is not None and current is not None:
                pos = lab.end()
                c.labels.append((current, lab["label"]))
                continue
            break
        cites.append(c)
    return cites


@dataclass
class RefDoc:
    lines: list[str]
    marks: list[tuple[int, str]]  #: (0-based line, section id) in file order, duplicates kept
    anchors: dict[str, tuple[int, int]]  #: section id -> (first line, end line), 0-based

    def span(self, section: str) -> str:
        start, end = self.anchors[section]
        return "\n".join(self.lines[start:end])


def load_refdoc(path: Path) -> RefDoc:
    """Sections of a reference file: numbered headings and bold ``§N.M`` list-item anchors.

    A heading's section runs to the next heading of the same or a higher level; an item anchor's
    to the next anchor or heading."""
    lines = path.read_text(encoding="utf-8").splitlines()
    headings: list[tuple[int, int]] = []  # (line, level) of every heading, numbered or not
    marks: list[tuple[int, str, int]] = []  # (line, id, level); item anchors get level 7
    in_code = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and (h := re.match(r"^(#{1,6})\s", line)):
            headings.append((i, len(h[1])))
            if n := HEADING_RE.match(line):
                marks.append((i, n["id"], len(h[1])))
        elif not in_code and (a := ITEM_ANCHOR_RE.match(line)):
            marks.append((i, a["id"], 7))
    anchors: dict[str, tuple[int, int]] = {}
    for i, ident, level in marks:
        if level == 7:
            later = [j for j, _, _ in marks if j > i] + [j for j, _ in headings if j > i]
        else:
            later = [j for j, lvl in headings if j > i and lvl <= level]
        anchors.setdefault(ident, (i, min(later, default=len(lines))))
    return RefDoc(lines, [(i, ident) for i, ident, _ in marks], anchors)


def normalise(s: str) -> str:
    s = s.lower().replace("→", "->").replace("\u2013", "-").replace("←", "<-")
    s = re.sub(r"[*`|:\"]", " ", s)
    return re.sub(r"\s+", " ", s).strip()


def all_citations() -> list[Citation]:
    """Citations in every tracked file but this one, whose parser cases cite on purpose."""
    cites = []
    for p in tracked_files():
        if p.resolve() == Path(__file__).resolve():
            continue
        cites += parse_citations(p.read_text(encoding="utf-8"), p.relative_to(ROOT).as_posix())
    return cites


def ref_docs() -> dict[str, RefDoc]:
    return {n: load_refdoc(REF_DIR / f"{n}.md") for n in NOTES if (REF_DIR / f"{n}.md").exists()}


# --- the checks -------------------------------------------------------------------------------


def test_every_reference_file_exists():
    missing = [n for n in NOTES if not (REF_DIR / f"{n}.md").is_file()]
    assert not missing, f"docs/reference/ lacks {missing}"


def test_citations_use_repo_paths():
    """Every citation is written ``docs/reference/FILE.md``: relative paths outside the repository
    and bare file names cannot be followed from a clone. (Fails until the old bare citations
    are rewritten to the ``docs/reference/`` form.)"""
    bad = [
        c.where()
        for c in all_citations()
        if c.prefix != REF_PREFIX
        and not (c.link_target and c.prefix == "" and c.path.startswith(REF_PREFIX))
    ]
    assert not bad, f"{len(bad)} citations without the docs/reference/ prefix:\n" + "\n".join(bad)


def test_cited_sections_exist():
    """Each cited section, list item and quoted row exists in the file it names."""
    docs = ref_docs()
    problems = []
    for c in all_citations():
        doc = docs.get(c.name)
        if doc is None:
            continue  # reported by test_every_reference_file_exists
        for s in c.sections:
            if s not in doc.anchors:
                problems.append(f"{c.where()} §{s}: no such section")
        for s, n in c.items:
            if s in doc.anchors and not re.search(rf"(?m)^\s*{n}\.\s", doc.span(s)):
                problems.append(f"{c.where()} §{s} item {n}: no such numbered item")
        for s, label in c.labels:
            placeholder = not set(label) - {".", "…", " "}  # ``row '...'`` in prose
            if s in doc.anchors and not placeholder and normalise(label) not in normalise(doc.span(s)):
                problems.append(f"{c.where()} §{s} '{label}': not in that section")
    assert not problems, "\n".join(problems)


def test_no_private_paths():
    """Nothing points outside the repository at the notes the reference files were written from."""
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in tracked_files()
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if PRIVATE_PATH in line
    ]
    assert not hits, f"{PRIVATE_PATH} is not part of the repository: " + ", ".join(hits)


def test_index_lists_every_reference_file():
    index = (REF_DIR / "README.md").read_text(encoding="utf-8")
    present = sorted(p.name for p in REF_DIR.iterdir() if p.is_file() and p.name != "README.md")
    unlisted = [n for n in present if n not in index]
    assert not unlisted, f"docs/reference/README.md does not list {unlisted}"
    listed = set(re.findall(r"\(([\w.-]+\.md)\)", index))
    assert listed <= set(present), f"docs/reference/README.md links missing files {listed - set(present)}"


def test_section_numbers_are_unique():
    """A section number names one place; a duplicate would make a citation ambiguous."""
    dupes = []
    for n, doc in ref_docs().items():
        seen: dict[str, int] = {}
        for i, ident in doc.marks:
            if ident in seen:
                dupes.append(f"{n}.md §{ident} at lines {seen[ident] + 1} and {i + 1}")
            seen[ident] = i
    assert not dupes, "\n".join(dupes)


# --- the checker itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "prefix", "sections", "items", "labels"),
    [
        ("see docs/reference/8237.md §3.5.", REF_PREFIX, ["3.5"], [], []),
        ("(8237.md §2.3, §3.2; qemu-qtest.md §8)", "", ["2.3", "3.2"], [], []),
        ("docs/reference/hil-lessons.md §3.20-§3.21", REF_PREFIX, ["3.20", "3.21"], [], []),
        ("docs/reference/linux-isa-dma.md §2(a) x", REF_PREFIX, ["2(a)"], [], []),
        ("docs/reference/linux-isa-dma.md §3 rules 4, 5 and", REF_PREFIX, ["3"], [("3", 4), ("3", 5)], []),
        (
            "8237.md §2.9 and §5 row 'Read 0x0F'; x",
            "",
            ["2.9", "5"],
            [],
            [("5", "Read 0x0F")],
        ),
        ("`../" + PRIVATE_PATH + "/8237.md` §2-§3", "../" + PRIVATE_PATH + "/", ["2", "3"], [], []),
        ("reference = '8237.md §2.9'\nname = 'x'", "", ["2.9"], [], []),
    ],
)
def test_parser(text, prefix, sections, items, labels):
    (c, *_) = parse_citations(text, "x")
    assert (c.prefix, c.sections, c.items, c.labels) == (prefix, sections, items, labels)


def test_checker_finds_missing_section_and_label():
    """The checks can fail: a made-up section, item or row is reported."""
    doc = load_refdoc(REF_DIR / "8237.md")
    assert "3.5" in doc.anchors and "3.10" not in doc.anchors
    assert "Read 0x0F" in doc.span("5") and "Read 0x0F" not in doc.span("3.1")
    lessons = load_refdoc(REF_DIR / "hil-lessons.md")
    assert "3.21" in lessons.anchors and "3.25" not in lessons.anchors
    assert "Safety rails" in lessons.span("3.21") and "Test isolation" not in lessons.span("3.21")
