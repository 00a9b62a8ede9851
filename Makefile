# `make test` is the README's test command and what CI runs (.ci/run), on a fresh machine.
.PHONY: test install test-serving

install:  ## the library with the CPU torch wheel
	pip install -q torch==2.13.0 -e .

test:  ## install what the tests need (CPU torch, dev extras, Chromium for the browser test), then run them
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver; \
	fi
	pip install -q torch==2.13.0 -e ".[dev]"
	pip install -q --no-deps lmms-eval==0.7.3  # its full dependency set is heavy; our dev extra has the light part
	python -m pytest

SERVING_VENV ?= .venv-serving
test-serving:  ## build the vLLM (CPU) venv (tests_serving/setup_venv.sh), then the real-server tests and their unit tests
	bash tests_serving/setup_venv.sh $(SERVING_VENV)
	$(SERVING_VENV)/bin/python -m pytest tests_serving tests/test_serving_pruning.py
