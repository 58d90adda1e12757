"""The layers stay visible and enforced: the import contract (pyproject's [tool.importlinter])
holds, no private name is imported across modules, no module outgrows one responsibility."""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SOURCES = sorted([*(ROOT / "blackbox_reprog").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
#: about 400 lines: past that a module holds more than one responsibility
MAX_LINES = 420


def test_the_import_contract_holds():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "expected import-linter installed with the test extras"
    done = subprocess.run([lint, str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    # the same contract on a copy of the package where the backends layer imports the run layer
    copy = tmp_path / "blackbox_reprog"
    shutil.copytree(ROOT / "blackbox_reprog", copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "backends" / "degrade.py", "a") as module:
        module.write("\nfrom ..run import trainer  # an upward import\n")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    done = subprocess.run([lint, str(ROOT / "pyproject.toml")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1 and "blackbox_reprog.backends.degrade -> blackbox_reprog.run.trainer" in done.stdout


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_private_name_is_imported_across_modules(path):
    tree = ast.parse(path.read_text())
    private = [f"{node.module}.{alias.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not private, f"{path.relative_to(ROOT)} imports private names: {', '.join(private)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_is_over_about_400_lines(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines"
