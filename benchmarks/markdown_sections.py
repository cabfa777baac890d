"""Replace one ``## Section`` of a markdown report, keeping the others (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import re
from pathlib import Path


def replace_section(path: Path, body: str, heading: str) -> None:
    """Write ``body`` (which starts with ``heading``) in place of that section of ``path``."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
