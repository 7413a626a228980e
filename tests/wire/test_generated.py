"""The committed wire package is exactly what `proto/generate.py` makes of `proto/`, and it
stands on its own: it imports neither role of the server nor the SDK."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "medsettle" / "v1"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_changes_nothing(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    fresh = {p.name: p.read_bytes() for p in written}
    committed = {p.name: p.read_bytes() for p in COMMITTED.iterdir() if p.is_file()}
    assert sorted(fresh) == sorted(committed), "run `python proto/generate.py`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files {stale}: run `python proto/generate.py`"


def test_every_proto_has_its_modules() -> None:
    for proto in sorted((ROOT / "proto" / "medsettle" / "v1").glob("*.proto")):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert (COMMITTED / f"{proto.stem}{suffix}").is_file()


def test_wire_package_imports_only_itself_and_libraries() -> None:
    for path in sorted((ROOT / "medsettle").rglob("*.py*")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in {"server", "clients", "bench", "tests"}, (
                    f"{path.relative_to(ROOT)} imports {name}"
                )
    assert importlib.import_module("medsettle.v1.settlement_pb2").DESCRIPTOR.package == (
        "medsettle.v1"
    )
