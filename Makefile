# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PY      := .venv/bin/python
STAMP   := .venv/.installed


.PHONY: demo test install data browser lint clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3.11 -m venv .venv
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) data browser

data:
	bash scripts/get_fashion_mnist.sh

# headless Chromium for tests/bench/test_report.py (as root; otherwise that test is skipped)
browser:
	bash scripts/get_chromium.sh

demo: install
	$(PY) -m bastion.cli demo

test: install
	.venv/bin/lint-imports
	$(PY) -m pytest -n 2 -q tests

lint: $(STAMP)
	.venv/bin/ruff check src tests benchmarks

clean:
	rm -rf .venv .cache
