"""Node identity: which front-end machine issues the ids of a node.

Every id a front-end issues begins with `id_prefix(kind, institution, node_id)`. Two machines
of one institution started with the same node id would issue the same ids, and the center
would take one's settlements for the other's. So each front-end machine has an instance id
of its own, random, made on its first start in `<db>.node` beside its database (mode 0600;
a database copied to another machine must not take it along) and sent in every NodeHeader.
The center binds (institution, node id) to the first instance that speaks for it (table
`nodes`, server/center/bindings.py) and refuses any other with FAILED_PRECONDITION, its
message beginning with `CLASH`; a front-end refused so stops (server/frontend/center_link.py,
server/background.py).

`issued_by` is the other half: an id a front-end forwards must be exactly one of the header's
institution and node (the prefix, then a 12-digit serial, or H or U and 12 hex digits for
center mode's ids derived from a msgid), so an institution whose code begins another's cannot
pass its ids for the other's.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from server.common import id_prefix

CLASH = "node clash"
INSTANCE_ID = re.compile(r"[0-9a-f]{32}")
_SERIAL = re.compile(r"[0-9]{12}|[HU][0-9a-f]{12}")


def instance_file(db: str) -> Path:
    return Path(f"{db}.node")


def node_instance(db: str) -> str:
    """This front-end's instance id, from `<db>.node`; made (32 hex digits, mode 0600) when
    absent. Several workers may start at once: the file appears whole or not at all."""
    path = instance_file(db)
    if not path.exists():
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and never replaces the file another worker made
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    text = path.read_text().strip()
    if not INSTANCE_ID.fullmatch(text):
        raise ValueError(f"{path}: not a front-end instance id (32 hex digits)")
    return text


def issued_by(value: str, kind: str, fixmedins_code: str, node_id: str) -> bool:
    """Whether `value` is an id of `kind` issued by this institution's node."""
    prefix = id_prefix(kind, fixmedins_code, node_id)
    return value.startswith(prefix) and _SERIAL.fullmatch(value[len(prefix) :]) is not None
