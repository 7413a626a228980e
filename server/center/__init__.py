"""The center role: the insurance center's authority on PostgreSQL, for every insured
person's yearly accumulators and the ledger.

`assembly.py` builds its gRPC services; `services.py` are those services (the `Center`
service front-ends call, its reconciliation); `settle.py` settles and cancels for a front-end
in center mode; `forwarded.py` takes what front-ends settled locally, re-deriving the money;
`store/` is the PostgreSQL store and its migrations.
"""
