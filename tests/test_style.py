"""The code base stays ruff-clean (lint and format) and mypy-clean, as the project requires;
ruff and mypy come with the test extras."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command: list[str]) -> None:
    result = _run("ruff", *command, "fedsim", "plugins", "tests", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    """``python -m mypy`` over fedsim and the built-in plugins (``[tool.mypy]``)."""
    result = _run("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_type_ignore_on_plugin_parameters() -> None:
    """``Attack[P]``/``Defence[P]`` type ``self.params``: no plugin needs to silence mypy
    to read its own parameters."""
    pattern = re.compile(r"params.*#\s*type:\s*ignore")
    offending = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("fedsim", "plugins")
        for path in (ROOT / folder).rglob("*.py")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offending, offending
