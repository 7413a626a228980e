"""Storage: SQLite for the front-end (`sqlite.py`), PostgreSQL for the center (`pg.py`).

`ACC_FIELDS` are a person's yearly accumulator columns, in the order every store and the
engine's `Accumulators` use.
"""

ACC_FIELDS = (
    "inpatient_count",
    "dedc_paid",
    "hifp_paid",
    "hifp_base",
    "critical_base",
    "critical_paid",
    "cvlserv_paid",
    "maf_paid",
)
