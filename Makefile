# `make test` is the README's test command and what CI runs (.ci/run), on a fresh machine.
# It builds one virtual environment per transformers release it tests (under .venvs/):
#   newest: whatever pip picks inside pyproject's range -> the whole suite
#   oldest: the range's lower bound (fastv/core/hf/compat.py OLDEST_TESTED) -> engine, families, methods, default model
#   serving: vLLM (CPU) with fastv's plug-in -> the real-server tests (tests_serving/setup_venv.sh builds it)
# `make test-transformers V=5.26.0` reruns the whole suite on any release (how the range moves forward).
.PHONY: test install system-deps test-newest test-oldest test-serving test-transformers

PYTHON ?= python3
VENVS := .venvs
TORCH := torch==2.13.0
OLDEST := $(shell sed -n 's/^OLDEST_TESTED = "\(.*\)"/\1/p' src/fastv/core/hf/compat.py)
CORE_TESTS := tests/test_compat.py tests/test_engine.py tests/test_families.py tests/test_methods.py \
	tests/test_stages.py tests/test_default_model.py

install:  ## the library with the CPU torch wheel
	pip install -q $(TORCH) -e .

system-deps:  ## Chromium for the demo's browser test, Java for CIDEr's PTB tokenizer
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! command -v java >/dev/null; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium chromium-driver default-jre-headless; \
	fi

# $(call venv,NAME,TRANSFORMERS-SPEC): a venv with CPU torch, fastv[dev] and lmms-eval (without its heavy deps)
define venv
	@[ -x $(VENVS)/$(1)/bin/python ] || $(PYTHON) -m venv $(VENVS)/$(1)
	$(VENVS)/$(1)/bin/pip install -q --upgrade $(TORCH) -e ".[dev]"
	$(if $(2),$(VENVS)/$(1)/bin/pip install -q $(2)  # a second step: a release outside pyproject's range installs too)
	$(VENVS)/$(1)/bin/pip install -q --no-deps lmms-eval==0.7.3
	@$(VENVS)/$(1)/bin/python -c "import transformers; print('$(1): transformers', transformers.__version__)"
endef

test: system-deps test-newest test-oldest test-serving  ## the whole suite on the newest release, the core on the oldest, vLLM serving

test-newest: system-deps
	$(call venv,newest,)
	$(VENVS)/newest/bin/lint-imports
	$(VENVS)/newest/bin/python -m pytest

test-oldest:
	$(call venv,oldest,"transformers==$(OLDEST)")
	$(VENVS)/oldest/bin/python -m pytest $(CORE_TESTS)

test-transformers: system-deps  ## make test-transformers V=5.26.0
	@[ -n "$(V)" ] || { echo "usage: make test-transformers V=<transformers version>"; exit 2; }
	$(call venv,tf-$(V),"transformers==$(V)")
	$(VENVS)/tf-$(V)/bin/python -m pytest

SERVING_VENV ?= $(VENVS)/serving
test-serving:  ## build the vLLM (CPU) venv (tests_serving/setup_venv.sh), then the real-server tests and their unit tests
	bash tests_serving/setup_venv.sh $(SERVING_VENV)
	$(SERVING_VENV)/bin/python -m pytest tests_serving tests/test_serving_pruning.py tests/test_serving_mrope.py
