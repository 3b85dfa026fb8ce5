.PHONY: serve test check bench

# Installs everything into .venv and starts the proxy on 127.0.0.1:8080.
serve:
	scripts/install
	.venv/bin/linguagate serve $(ARGS)

# Installs runtime + test deps (and redis-server when missing) and runs the suite.
test:
	scripts/install test
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)
