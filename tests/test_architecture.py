"""The layers of ARCHITECTURE.md hold, and the check that guards them can fail: import-linter's
contracts (pyproject.toml) pass on the package, and each breaks when its rule is broken in a
copy of it. Imports are followed through other modules: a crossing is caught however deep."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the `batchrunner` package found in `root`, with the repo's contracts."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_package_keeps_every_contract() -> None:
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("ledger/store.py", "import batchrunner.backends.http", "The ledger imports no runner"),
        ("ledger/records.py", "import openai", "The ledger imports no runner"),
        ("backends/base.py", "import batchrunner.ledger", "Backends import no ledger"),
        ("runner/batch.py", "import openai", "Runners reach providers only through"),
        ("runner/concurrent.py", "import pyreqwest", "Runners reach providers only through"),
        ("dialects/openai.py", "import sqlalchemy", "Dialects are pure"),
        ("outcome.py", "import batchrunner.ledger", "Plain values depend on nothing"),
    ],
)
def test_crossing_a_layer_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    shutil.copytree(REPO / "batchrunner", tmp_path / "batchrunner")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "batchrunner" / module
    target.write_text(target.read_text() + f"\n{line}  # a layer crossed\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    # The crossing breaks its own contract (and, through it, any layer that imports this one).
    report = result.stdout.split("Broken contracts", 1)[1]
    assert contract in report
    assert f"-> {line.split()[-1]} (l." in report  # the crossing import, named with its line
