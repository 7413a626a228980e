"""The demo: its data set (`dataset.py`, `demo_city_policy.toml`) and the synthetic catalog
and hospital-item generators it draws on (`synth/`), the scripted HIS visit of `make demo`
(`visit.py`) and a server as a child process on loopback (`localserver.py`) for the demo,
the tests and the load kit. Production serving never needs any of it."""
