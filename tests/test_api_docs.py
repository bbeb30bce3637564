"""docs/api.md, the Python API reference: every public name has its section, and it is fresh."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import launcher

REPO = Path(__file__).resolve().parent.parent
API_MD = REPO / "docs" / "api.md"


@pytest.mark.parametrize("name", [n for n in launcher.__all__ if n != "__version__"])
def test_every_public_name_has_a_section(name: str) -> None:
    text = API_MD.read_text(encoding="utf-8")
    assert f"\n### `{name}`" in text or f"\n### `{name}(" in text, f"docs/api.md has no section for {name}"


def test_the_reference_is_what_the_docstrings_say() -> None:
    checked = subprocess.run(
        [sys.executable, str(REPO / "docs" / "make_api_md.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
