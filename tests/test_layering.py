"""Layering: `model` and `annotation` (every submodule) import without Qt or napari, and `model`
never imports `annotation`. Checked in a fresh interpreter, where sys.modules shows the truth."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys

    FORBIDDEN = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "vispy", "magicgui")
    reports = {}
    for root in sys.argv[1:]:  # model first: its modules must not pull annotation in
        package = importlib.import_module(root)
        names = [root] + sorted(
            info.name for info in pkgutil.walk_packages(package.__path__, prefix=root + ".")
            if not info.name.endswith(".__main__")  # entry points run when imported
        )
        reports[root] = {"modules": names, "culprits": {}, "errors": {}}
        for name in names:
            before = set(sys.modules)
            try:
                importlib.import_module(name)
            except Exception as exc:  # an unimportable module is reported, not hidden
                reports[root]["errors"][name] = f"{type(exc).__name__}: {exc}"
                continue
            new = {m.split(".")[0] for m in set(sys.modules) - before}
            bad = sorted(m for m in new if m in FORBIDDEN or (root == "model" and m == "annotation"))
            if bad:
                reports[root]["culprits"][name] = bad
    print(json.dumps(reports))
    """
)


def _probe(*roots: str) -> dict:
    """Import every module of `roots` in one fresh interpreter and report what each pulled in."""
    result = subprocess.run([sys.executable, "-c", PROBE, *roots], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reports() -> dict:
    return _probe("model", "annotation")


def test_model_imports_neither_qt_nor_napari_nor_annotation(reports: dict) -> None:
    report = reports["model"]
    assert "model.ct.io" in report["modules"] and "model.ct.windows" in report["modules"]
    assert report["errors"] == {}, report["errors"]
    assert report["culprits"] == {}, f"modules pulling in UI code or annotation: {report['culprits']}"


def test_annotation_imports_neither_qt_nor_napari(reports: dict) -> None:
    report = reports["annotation"]
    assert len(report["modules"]) > 1
    assert report["errors"] == {}, report["errors"]
    assert report["culprits"] == {}, f"modules pulling in UI code: {report['culprits']}"
