#!/usr/bin/env python3
"""Regenerate docs/BENCHMARKS.md from docs/benchmarks/*.md (summary first, then each package's
section, headings demoted one level where a file starts at `#`)."""

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SECTIONS = ["core", "redis", "service", "envoy", "rls", "plugin", "loadtest"]


def demote(text: str) -> str:
    """Make the file's top heading a `##`, shifting the others with it (code fences untouched)."""
    lines = text.splitlines()
    top = min((len(m.group(1)) for l in lines if (m := re.match(r"^(#+) ", l))), default=2)
    shift = 2 - top
    out, fence = [], False
    for line in lines:
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^(#+) ", line)
        if m:
            line = "#" * (len(m.group(1)) + shift) + line[len(m.group(1)):]
        out.append(line)
    return "\n".join(out) + "\n"


def main() -> None:
    parts = [(HERE / "summary.md").read_text()]
    parts += [demote((HERE / f"{name}.md").read_text()) for name in SECTIONS]
    (HERE.parent / "BENCHMARKS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
