"""The center's PostgreSQL store: the pool, per-person accumulator locks and the audit
chain (`pg.py`), and its schema migrations (`migrations.py`)."""
