"""The front-end's gRPC services: thin layers that check a request and run an operation on
the store (`server/frontend/visits.py`, `settle.py`, `operators.py`)."""
