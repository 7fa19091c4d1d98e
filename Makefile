# The two commands of the README. Both set the machine up first (idempotent).
.PHONY: setup demo test lint

setup:
	@bash deploy/local/setup.sh

# The main job: a real Rucio (with its daemons and hermes), the four services on the local
# broker, and `dlaas stage user.alice:ds2 --rse NOTEBOOK --wait` end to end.
demo: setup
	.venv/bin/python -m dlaas_devstack.demo

# Every test: unit, broker, Rucio, XRootD, FUSE and end to end, plus lint and types.
test: setup lint
	.venv/bin/python -m pytest

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
