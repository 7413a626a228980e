"""The keys medsettle keeps its data with, derived from one 32-byte master key.

The master comes from `MEDSETTLE_DATA_KEY` (64 hex digits) or the file `data_key_file`
names (the same hex, mode 0600). A front-end without either makes `<db>.key` beside its
database on first start and says so in its log: a development default; production keeps
the master outside the database's backups (an HSM, or a file only the service can read).
Losing the master loses the personal identifiers and the audit chain's proof, so back it up
apart from the data.

From the master, HKDF-SHA256 derives one key per use, so no key serves two purposes:
- `pii_seal`: AES-256-GCM for personal identifiers at rest (pii.py);
- `pii_index`: HMAC-SHA256 for their lookup hashes (an equality search without the clear
  text);
- `audit`: HMAC-SHA256 of the audit chain (audit.py), so that whoever can write the database
  but lacks the key cannot forge a consistent chain.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger("medsettle.security")

ENV = "MEDSETTLE_DATA_KEY"


@dataclass(frozen=True)
class DataKeys:
    pii_seal: bytes
    pii_index: bytes
    audit: bytes

    @classmethod
    def derive(cls, master: bytes) -> DataKeys:
        if len(master) != 32:
            raise ValueError("data key: the master key is 32 bytes (64 hex digits)")

        def sub(label: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, salt=None, info=b"medsettle/" + label).derive(master)

        return cls(sub(b"pii-seal/1"), sub(b"pii-index/1"), sub(b"audit-chain/1"))


def _parse(text: str, where: str) -> bytes:
    try:
        return bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(f"{where}: not hex") from None


def load(key_file: str, default_file: str | None) -> DataKeys:
    """The keys from the environment, else `key_file`, else `default_file` (made with a
    fresh master when absent; None: no default, the key must be given)."""
    env = os.environ.get(ENV, "")
    if env:
        return DataKeys.derive(_parse(env, ENV))
    path = key_file or default_file
    if not path:
        raise ValueError(f"data_key_file: not set, and no {ENV} in the environment")
    p = Path(path)
    if not p.exists():
        if key_file:
            raise ValueError(f"data_key_file: {key_file} does not exist")
        create(p)
        log.warning("made a data key at %s: keep it, and back it up apart from the data", p)
    return DataKeys.derive(_parse(p.read_text(), str(p)))


def create(path: Path) -> None:
    """A fresh master key in `path` (hex, mode 0600); an existing file is never replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_bytes(32).hex() + "\n")
