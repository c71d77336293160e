"""The layering is checked, not hoped for: the import-linter contracts in pyproject.toml fail
when a lower layer imports a higher one (run on a copy of the tree with one upward import)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "streams", "models", "agents")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}\n")


def test_contracts_hold_on_the_tree(tree: Path):
    result = lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("streams/decisions.py", "import agents.runtime.app", "Layers"),
        ("models/promotion/ope.py", "import agents.pipeline", "Layers"),
        ("streams/timers.py", "import prometheus_client", "know no Faust"),
        ("agents/runtime/topics.py", "import agents.worker", "Inside agents"),
    ],
)
def test_an_upward_import_breaks_a_contract(tree: Path, module: str, line: str, contract: str):
    add_import(tree / module, line)
    result = lint(tree)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout
