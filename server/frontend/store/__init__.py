"""The front-end's SQLite store: group commit, the write turn across worker processes
(`sqlite.py`), its schema migrations (`migrations.py`) and the line-results blob
(`line_results.py`)."""
