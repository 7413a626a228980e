"""Generates the wire package `medsettle.v1` from `proto/medsettle/v1/*.proto`.

The generated modules are committed (a wheel built from a clean checkout carries them);
`tests/wire/test_generated.py` regenerates them into a scratch directory and fails if
anything differs, so an edit to a `.proto` without `python proto/generate.py` cannot land.
protoc names each import after the proto path (`from medsettle.v1 import common_pb2`), which
is exactly the package's place in this repository: nothing is rewritten after protoc.
Typed `.pyi` stubs come from mypy-protobuf (pinned in the dev extra, so the output is
reproducible), and mypy checks every use of the messages and stubs.

Usage: `python proto/generate.py [--out DIR]` (DIR defaults to the repository's root).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_INIT = (
    '"""The wire contract `medsettle.v1`, generated from proto/ by proto/generate.py."""\n'
)


def generate(out: Path = ROOT) -> list[Path]:
    """Writes `<out>/medsettle/v1/` afresh; returns the files written."""
    protos = sorted(PROTO_DIR.glob("medsettle/v1/*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    target = out / "medsettle" / "v1"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    if not plugin.exists():
        raise SystemExit("protoc-gen-mypy is missing: install the dev extra (mypy-protobuf)")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{resources.files('grpc_tools') / '_proto'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--plugin=protoc-gen-mypy_grpc={plugin.with_name('protoc-gen-mypy_grpc')}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_DIR)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (target / "__init__.py").write_text(PACKAGE_INIT, encoding="utf-8")
    return sorted(target.iterdir())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    files = generate(parser.parse_args().out)
    print(f"generate: {len(files)} files in medsettle/v1")
