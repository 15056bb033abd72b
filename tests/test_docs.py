"""The project's docs stay true to the tree: every module is in the architecture page's module map,
and every relative link in README.md and docs/*.md resolves to a file or folder of the repository
(and its #anchor to a heading, for a Markdown file)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: [text](target) and [text](target "title"); images too
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)


def _map_script():
    spec = importlib.util.spec_from_file_location("_module_map", DOCS / "_module_map.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def mapped_modules(text: str, start: str, end: str) -> set[str]:
    """Module names listed between the map's markers (``- `scalerec.x` — ...`` lines)."""
    assert start in text and end in text, "the module-map markers are missing from docs/architecture.md"
    block = text.split(start, 1)[1].split(end, 1)[0]
    return set(re.findall(r"^- `([\w.]+)`", block, re.M))


def relative_links(text: str) -> list[str]:
    """Link targets that point into the repository (no scheme, no bare #anchor), code blocks skipped."""
    out = []
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        out.append(target)
    return out


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces as '-'."""
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCE.sub("", markdown), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    """Targets missing from the repository, and #anchors missing from the Markdown file they name."""
    broken = []
    for target in relative_links(doc.read_text(encoding="utf-8")):
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve()
        if not path.is_relative_to(root.resolve()) or not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
            broken.append(target)
    return broken


def test_every_module_is_in_the_module_map() -> None:
    script = _map_script()
    sources = sorted((ROOT / "src" / "scalerec").rglob("*.py"))
    assert len(sources) > 20, "the source tree was not found"
    modules = {script.module_name(p) for p in sources}
    listed = mapped_modules((DOCS / "architecture.md").read_text(encoding="utf-8"), script.START, script.END)
    missing, stale = sorted(modules - listed), sorted(listed - modules)
    assert not missing, f"modules missing from the map (run `python docs/_module_map.py --write`): {missing}"
    assert not stale, f"the map lists modules that do not exist: {stale}"


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("doc", _docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_in_the_repository(doc: Path) -> None:
    assert not broken_links(doc), f"{doc.relative_to(ROOT)} links to what the repository lacks: {broken_links(doc)}"


def test_the_checks_can_fail(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    doc = tmp_path / "docs" / "page.md"
    (tmp_path / "there.md").write_text("# A `code` part, here\n")
    doc.write_text(
        "[ok](../there.md#a-code-part-here) [web](https://example.org) [anchor](#top) [gone](missing.md) "
        "[outside](../../elsewhere.md) [no such part](../there.md#part)\n```\n[in code](nowhere.md)\n```\n"
    )
    assert broken_links(doc, tmp_path) == ["missing.md", "../../elsewhere.md", "../there.md#part"]
    text = "<!-- a -->\n- `scalerec.x` — one\n- `scalerec.y.z` — two\n<!-- b -->\n- `scalerec.after` — no"
    assert mapped_modules(text, "<!-- a -->", "<!-- b -->") == {"scalerec.x", "scalerec.y.z"}
