"""Storage: SQLite for the front-end (this package), PostgreSQL for the center (later)."""
