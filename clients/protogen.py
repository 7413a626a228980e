"""Generates the Python stubs of `proto/medsettle/v1/*.proto` into `clients/pb/` (run by
`make build`; the generated files are never committed or edited by hand).

protoc names imports after the proto path (`from medsettle.v1 import common_pb2`); the
stubs live inside this repository's `clients` package, so those imports are rewritten to
`from clients.pb.medsettle.v1 import ...`. Typed `.pyi` stubs come from mypy-protobuf when it
is installed (the dev extra), so mypy checks every use of the messages and stubs.
"""

from __future__ import annotations

import re
import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT = ROOT / "clients" / "pb"
_IMPORT = re.compile(r"^from medsettle\.v1 import ", re.MULTILINE)
_IMPORT_PYI = re.compile(r"^import medsettle\.v1\.", re.MULTILINE)


def generate() -> list[Path]:
    protos = sorted(PROTO_DIR.glob("medsettle/v1/*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR}")
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
    ]
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    if plugin.exists():
        grpc_plugin = plugin.with_name("protoc-gen-mypy_grpc")
        args += [
            f"--plugin=protoc-gen-mypy={plugin}",
            f"--plugin=protoc-gen-mypy_grpc={grpc_plugin}",
            f"--mypy_out={OUT}",
            f"--mypy_grpc_out={OUT}",
        ]
    else:
        args.append(f"--pyi_out={OUT}")
    args += [str(p.relative_to(PROTO_DIR)) for p in protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = []
    for path in sorted(OUT.rglob("*.py*")):
        text = path.read_text(encoding="utf-8")
        text = _IMPORT.sub("from clients.pb.medsettle.v1 import ", text)
        text = _IMPORT_PYI.sub("import clients.pb.medsettle.v1.", text)
        text = text.replace(" medsettle.v1.", " clients.pb.medsettle.v1.")
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for pkg in (OUT, OUT / "medsettle", OUT / "medsettle" / "v1"):
        (pkg / "__init__.py").touch()
    return written


if __name__ == "__main__":
    files = generate()
    print(f"protogen: {len(files)} files in {OUT.relative_to(ROOT)}")
