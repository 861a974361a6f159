"""README.md and docs/*.md: the snippet convention (which blocks run; tests/support/doc_snippets.py),
manifests that the API accepts, links that lead somewhere, generated parts that are current.

The blocks themselves run in tests/e2e/test_docs_snippets.py, against the dev cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.doc_snippets import REPO, Block, all_blocks, doc_files, parse, runnable_blocks
from tts_operator import api

#: links to files that another change brings (checked once they exist)
PENDING_FILES = {
    # the serving web page's screenshot comes with the page
    REPO / "docs" / "images" / "webpage.png",
}
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def test_every_block_follows_the_convention() -> None:
    problems = [f"{p.where}: {p.what}" for path in doc_files() for p in parse(path)[1]]
    assert not problems, "\n".join(problems)


def test_the_convention_catches_what_it_should(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- not run: needs a GPU -->\n\n```bash\nnvidia-smi\n```\n"
        "```bash\necho runs\n```\n"
        "<!-- not run: -->\n```python\nprint()\n```\n"
        "<!-- not run: dangling -->\ntext\n"
        "```\nno language\n```\n"
        "```console\n$ kubectl get trun\n```\n"
    )
    blocks, problems = parse(doc)
    assert [(b.language, b.not_run, b.runs) for b in blocks] == [
        ("bash", "needs a GPU", False),
        ("bash", None, True),
        ("python", "", False),
        ("", None, False),
        ("console", None, False),
    ]
    assert [p.what for p in problems] == [
        "a 'not run' marker needs a reason",
        "a 'not run' marker not followed by a block",
        "a fenced block without a language (bash, python, console, yaml, ...)",
    ]


def test_blocks_run_and_skips_are_explained() -> None:
    blocks = all_blocks()
    runs = runnable_blocks()
    skipped = [b for b in blocks if b.not_run is not None]
    assert runs, "no doc block runs: the convention's parser is broken"
    assert all(b.not_run for b in skipped), "a 'not run' marker without a reason"
    # the README's API example is one that runs
    assert any(b.path.name == "README.md" and b.language == "python" for b in runs)


@pytest.mark.parametrize(
    "block", [b for b in all_blocks() if b.language == "yaml" and b.not_run is None], ids=lambda b: b.where
)
def test_manifests_of_our_kinds_are_valid(block: Block) -> None:
    kinds = {"TrainingRun": api.TrainingRun, "VoiceModel": api.VoiceModel}
    for doc in yaml.safe_load_all(block.code):
        if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(api.API_GROUP + "/"):
            kinds[doc["kind"]].model_validate(doc)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, in_fence = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
        elif not in_fence and (m := _HEADING.match(line)):
            anchors.add(_slug(m.group(1)))
    return anchors


def test_local_links_lead_somewhere() -> None:
    broken = []
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # links in code are not links
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in _LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO)} -> {target}"
            if dest in PENDING_FILES:
                continue
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: no such heading")
    assert not broken, "\n".join(broken)


def test_no_tracker_references() -> None:
    """The docs are read by people who never saw the issue tracker: no "issue 9", no "#14"."""
    pattern = re.compile(r"\bissues?\s+#?\d+|(?<![\w.#/])#\d+(?![\w-])", re.IGNORECASE)
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in doc_files()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "\n".join(found)


def test_serving_api_reference_is_current() -> None:
    gen = REPO / "docs" / "tools" / "gen_serving_api.py"
    out = subprocess.run([sys.executable, str(gen), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_crd_descriptions_state_a_default_once() -> None:
    """kubectl explain shows defaults only in descriptions: each says it once, and never an empty one."""
    for path in (REPO / "crds").glob("*.yaml"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(Default: [^.]*\.)\s*\1", text), path
        assert "Default: ." not in text, path
