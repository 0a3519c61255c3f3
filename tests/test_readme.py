"""The README's Python section runs as written (its own assertion checks the README 1-D example
against the independent oracle's value)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "the README has no Python section"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})  # noqa: S102 (the README is ours)
    assert "steps 0.540385958" in capsys.readouterr().out
