"""Files the benchmark scripts write (shared by all of them): atomic text writes, JSON result caches,
and replacing one ``## Section`` of a markdown report while keeping the others."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer per cache there
    fcntl = None


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_json(path: Path, default=None):
    """The JSON object in ``path``, or ``default`` (an empty dict if None) when there is no such file."""
    path = Path(path)
    if path.is_file():
        return json.loads(path.read_text())
    return {} if default is None else default


def save_json(path: Path, obj, indent: int = 1, sort_keys: bool = False) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a result cache an interrupted run resumes from)."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


@contextlib.contextmanager
def locked(path: Path):
    """Hold an exclusive advisory lock on ``path`` + ``.lock`` (processes sharing a cache take turns)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def replace_section(path: Path, body: str, heading: str) -> None:
    """Write ``body`` (which starts with ``heading``) in place of that section of ``path``."""
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    new = body.rstrip("\n") + "\n"
    if start is None:
        text = text.rstrip("\n") + "\n\n" + new
    else:
        end = next((i for i in range(start + 1, len(lines)) if re.match(r"^## (?!#)", lines[i])), len(lines))
        tail = "".join(lines[end:])
        text = "".join(lines[:start]) + new + ("\n" + tail if tail else "")
    write_text_atomic(path, text)
