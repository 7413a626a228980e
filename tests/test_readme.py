"""The README's "How a HIS calls it" example runs as written against a demo front-end."""

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
