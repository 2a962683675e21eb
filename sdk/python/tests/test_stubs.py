"""The committed stub of the sync API matches the async classes, and names
only what the generated sync classes have."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import warren

ROOT = Path(__file__).resolve().parents[1]


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen", ROOT / "tools/gen_sync_stubs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stub_is_fresh() -> None:
    gen = _generator()
    assert gen.STUB.read_text() == gen.render(), "run: python tools/gen_sync_stubs.py"


def test_stub_names_exist_at_run_time() -> None:
    tree = ast.parse((ROOT / "src/warren/__init__.pyi").read_text())
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert {c.name for c in classes} >= {"Sandbox", "Process", "Image", "Filesystem"}
    for cls in classes:
        runtime = getattr(warren, cls.name)
        for node in cls.body:
            if isinstance(node, ast.FunctionDef):
                assert hasattr(runtime, node.name), f"{cls.name}.{node.name}"
