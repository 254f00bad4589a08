# The two set-up commands of README.md: `make serve` and `make test`.
VENV  := .venv
STAMP := $(VENV)/.installed

.PHONY: setup serve test
setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-venv.sh
	scripts/setup-venv.sh
	touch $@

# Gateway + engine on the embedded tiny model; `make serve ARGS="--model /path --port 8080"`.
serve: $(STAMP)
	$(VENV)/bin/alm serve $(ARGS)

# Quality gates first (seconds: lint, format, types, import rules), then every test (the `containers` ones included: they build and run the image).
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	@if [ -x scripts/install-test-tools.sh ]; then scripts/install-test-tools.sh; fi
	$(VENV)/bin/pytest $(PYTEST_ARGS)
