"""The test tiers: every test carries exactly one of unit / dagster / cli / training, and the
tables in conftest.py that assign them (and `slow`) name modules and tests that exist."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

from .builders import REPO


def test_every_collected_test_has_exactly_one_tier(collected_tiers):
    assert collected_tiers, "the collection hook saw no tests"
    wrong = {node: tiers for node, tiers in collected_tiers.items() if len(tiers) != 1}
    assert not wrong, (
        "each test needs exactly one tier marker: add its module to TIERS in "
        f"quantgod_assets_tests/conftest.py (or the test to TIER_OF_TEST); got {wrong}"
    )


def test_every_test_module_on_disk_has_a_tier(tier_tables):
    folder = tier_tables["dir"]
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("test_*.py")}
    assert on_disk == set(tier_tables["tiers"]), (
        f"no tier: {sorted(on_disk - set(tier_tables['tiers']))}; "
        f"in TIERS but gone: {sorted(set(tier_tables['tiers']) - on_disk)}"
    )
    assert set(tier_tables["tiers"].values()) | set(tier_tables["tier_of_test"].values()) <= set(tier_tables["names"])


def test_no_test_module_imports_another(tier_tables):
    """Shared pieces live in builders.py (or conftest fixtures), so a module runs and reads alone."""
    folder = tier_tables["dir"]
    offenders = []
    for path in sorted(folder.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or "", *(a.name for a in node.names)] if node.level else [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            if any(part.startswith("test_") for name in names for part in name.split(".")):
                offenders.append(f"{path.relative_to(folder)}:{node.lineno}")
    assert not offenders, f"test modules importing other test modules: {offenders}"


def test_per_test_entries_name_test_functions_that_exist(tier_tables):
    folder = tier_tables["dir"]
    entries = [*tier_tables["tier_of_test"], *tier_tables["slow"]]
    missing = []
    for entry in entries:
        module, name = entry.split("::")
        path = folder / module
        if not path.is_file() or not re.search(rf"^def {re.escape(name)}\(", path.read_text(), re.M):
            missing.append(entry)
    assert not missing, f"TIER_OF_TEST / SLOW name tests that do not exist (renamed?): {missing}"
    for entry, tier in tier_tables["tier_of_test"].items():
        assert tier != tier_tables["tiers"][entry.split("::")[0]], f"{entry} repeats its module's tier"


def test_selecting_by_tier_leaves_no_test_out():
    """A real `pytest -m` over the whole suite selects no test with zero or two tiers."""
    none_or_two = ("not (unit or dagster or cli or training) or (unit and (dagster or cli or training))"
                   " or (dagster and (cli or training)) or (cli and training)")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m", none_or_two],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 5, done.stdout[-3000:] + done.stderr[-3000:]  # 5: no tests collected
    found = re.search(r"no tests collected \((\d+) deselected\)", done.stdout)
    assert found and int(found.group(1)) > 300, done.stdout[-2000:]
