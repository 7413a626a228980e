"""The front-end role (前置机): a hospital's own settlement server on SQLite.

`assembly.py` builds its gRPC services over its store; `services/` are those services (the
HIS transactions, sign-in, catalog and reconciliation); `visits.py`, `settle.py` and
`operators.py` are the operations they run inside the store's transactions; `store/` is the
SQLite store, its migrations and the line-results blob; `center_mode.py` settles at the
center, `center_link.py` reaches it, `forwarder.py` forwards what settled here and
`refdata_pull.py` pulls catalog and policy versions from it.
"""
