# `make test` is the README's test command and what CI runs (.ci/run), on a fresh machine.
.PHONY: test install

install:  ## the library with the CPU torch wheel
	pip install -q torch==2.13.0 -e .

test:  ## install what the tests need (CPU torch, dev extras, Chromium for the browser test, Java for CIDEr's PTB tokenizer), then run them
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! command -v java >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver default-jre-headless; \
	fi
	pip install -q torch==2.13.0 -e ".[dev]"
	pip install -q --no-deps lmms-eval==0.7.3  # its full dependency set is heavy; our dev extra has the light part
	python -m pytest
