# The two README commands: `make run` (setup + dvc repro) and `make test` (setup + tests).
# Setup is idempotent: the venv lives in ~/.cache/nsp/venv-<hash of requirements.lock>.
SHELL := /bin/bash
# PYTHONPATH: this clone's nsp/ even when another clone re-linked the shared venv's editable install
BOOT = V="$$(bash .ci/bootstrap.sh)" && export PATH="$$V/bin:$$PATH" && export MLFLOW_DISABLE_TELEMETRY=true \
	&& export PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}"

.PHONY: run test test-slow test-all bench dashboard mlflow-ui lint

run:
	@$(BOOT) && bash .ci/dvc-setup.sh && dvc repro && nsp report

test:
	@$(BOOT) && python -m pytest -q

test-slow:
	@$(BOOT) && python -m pytest -q -m slow

test-all:
	@$(BOOT) && python -m pytest -q -m "slow or not slow"

bench:
	@$(BOOT) && nsp bench

dashboard:
	@$(BOOT) && nsp dashboard

mlflow-ui:
	@$(BOOT) && mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

lint:
	@$(BOOT) && ruff format --check nsp app tests studies benchmarks && ruff check nsp app tests benchmarks
