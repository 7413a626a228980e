"""The README: its "How a HIS calls it" example runs as written against a demo front-end,
and its layout table names paths that exist and every package there is."""

from __future__ import annotations

import re
from pathlib import Path

from server.demo.localserver import LocalServer

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_sdk_example_runs(frontend: LocalServer) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## How a HIS calls it") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    source = code.group(1).replace("127.0.0.1:50051", frontend.target)
    source = source.replace("frontend.db.demo-password", f"{frontend.db}.demo-password")
    scope: dict[str, object] = {}
    exec(compile(source, "README.md", "exec"), scope)
    slip = scope["slip"]
    assert getattr(slip, "setl_id", "") and getattr(slip, "medfee_sumamt", 0) == 19_454


ROOT = README.parent
# Folders a newcomer must find in the layout table: every Python package, the bindings'
# folder, and the top-level folders.
TOP_LEVEL = ("proto", "medsettle", "engine_rs", "server", "clients", "bench", "tests")


def _layout_paths() -> list[str]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Layout") : text.index("## Engine")]
    return re.findall(r"^\| `([^`]+)` \|", table, re.M)


def _packages() -> set[str]:
    found = {
        str(init.parent.relative_to(ROOT))
        for top in ("medsettle", "server", "clients", "bench", "tests")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    return found | set(TOP_LEVEL) | {"engine_rs/src/python"}


def test_layout_names_only_paths_that_exist() -> None:
    paths = _layout_paths()
    assert len(paths) > 10
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists()]
    assert not missing, f"README layout names paths that do not exist: {missing}"


def test_layout_names_every_package() -> None:
    named = {p.rstrip("/") for p in _layout_paths()}
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## Layout") : text.index("## Engine")]
    # a test package may be named inside the `tests/` row rather than a row of its own
    unnamed = sorted(pkg for pkg in _packages() if pkg not in named and f"`{pkg}/`" not in table)
    assert not unnamed, f"README layout does not name: {unnamed}"
