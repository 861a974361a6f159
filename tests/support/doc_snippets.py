"""The fenced blocks of README.md and docs/*.md, and the convention that says which of them run.

The convention (docs/development.md, "Docs that run"):

- every fenced block names its language; ``bash``, ``sh`` and ``python`` blocks are run by
  tests/e2e/test_docs_snippets.py against a served model on the dev cluster;
- a block that cannot run there (it needs a real GPU cluster, a registry, minutes of setup, or it
  would stop the cluster the test runs on) is preceded by ``<!-- not run: REASON -->``, and the
  reason is required, so every skip is visible and reviewable;
- ``yaml`` blocks holding a TrainingRun or VoiceModel are validated by the API models (the same
  that generate the CRDs), unless marked the same way;
- ``console`` blocks are transcripts (commands with their output) and ``text``, ``json``,
  ``mermaid`` blocks are shown only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: blocks that run (bash/sh through bash, python through the test's interpreter)
RUN_LANGUAGES = frozenset({"bash", "sh", "python"})
#: blocks that are shown only
SHOWN_LANGUAGES = frozenset({"console", "yaml", "json", "text", "mermaid"})

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+)(?P<info>.*)$")
_NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    #: 1-based line of the opening fence
    line: int
    language: str
    code: str
    #: why it is not run, from the marker before it; None: it runs (or is checked)
    not_run: str | None

    @property
    def where(self) -> str:
        rel = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        return f"{rel}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.not_run is None


@dataclass(frozen=True)
class Problem:
    where: str
    what: str


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def parse(path: Path) -> tuple[list[Block], list[Problem]]:
    """The fenced blocks of ``path`` and what breaks the convention in it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[Problem] = []
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    pending: tuple[int, str] | None = None  # (line, reason) of a marker not yet followed by a block
    i = 0
    while i < len(lines):
        line = lines[i]
        marker = _NOT_RUN.match(line)
        if marker is not None:
            if pending is not None:
                problems.append(Problem(f"{rel}:{pending[0]}", "a 'not run' marker not followed by a block"))
            reason = marker.group("reason").strip()
            if not reason:
                problems.append(Problem(f"{rel}:{i + 1}", "a 'not run' marker needs a reason"))
            pending = (i + 1, reason)
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence is None:
            if line.strip() and pending is not None:
                problems.append(Problem(f"{rel}:{pending[0]}", "a 'not run' marker not followed by a block"))
                pending = None
            i += 1
            continue
        indent, ticks, info = fence.group("indent"), fence.group("fence"), fence.group("info").strip()
        language = info.split()[0] if info else ""
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (
            lines[j].strip().startswith(ticks) and lines[j].strip().strip("`") == ""
        ):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            problems.append(Problem(f"{rel}:{i + 1}", "a fenced block that is never closed"))
        if not language:
            problems.append(
                Problem(
                    f"{rel}:{i + 1}", "a fenced block without a language (bash, python, console, yaml, ...)"
                )
            )
        elif language not in RUN_LANGUAGES | SHOWN_LANGUAGES:
            problems.append(Problem(f"{rel}:{i + 1}", f"unknown block language {language!r}"))
        not_run = pending[1] if pending is not None else None
        if not_run is not None and language not in RUN_LANGUAGES | {"yaml"}:
            problems.append(Problem(f"{rel}:{i + 1}", f"a 'not run' marker on a {language or 'plain'} block"))
        blocks.append(Block(path, i + 1, language, "\n".join(body) + "\n", not_run))
        pending = None
        i = j + 1
    if pending is not None:
        problems.append(Problem(f"{rel}:{pending[0]}", "a 'not run' marker not followed by a block"))
    return blocks, problems


def all_blocks() -> list[Block]:
    return [b for path in doc_files() for b in parse(path)[0]]


def runnable_blocks() -> list[Block]:
    return [b for b in all_blocks() if b.runs]
