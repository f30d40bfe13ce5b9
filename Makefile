# The README's second command: `make test` builds everything and runs every test.
.PHONY: test venv lint check crd docs examples quickstart

CARGO ?= cargo
PYTHON ?= python3

# Python test tools (moto's STS server, the AWS CLI) live in .venv at the repo root; the tests
# look for them there. The stamp's name carries a checksum of the pinned requirements, so a
# changed pin reinstalls and an unchanged one costs nothing.
VENV := .venv
REQUIREMENTS := tests/requirements.txt
VENV_STAMP := $(VENV)/.installed-$(firstword $(shell cksum < $(REQUIREMENTS)))

test: venv
	$(CARGO) test --locked

venv: $(VENV_STAMP)

$(VENV_STAMP):
	@rm -f $(VENV)/.installed-*
	@$(VENV)/bin/python -c '' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python -m pip install --disable-pip-version-check --no-input --quiet -r $(REQUIREMENTS)
	@touch $@

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

check: lint test

# Regenerate deploy/crd.yaml from the Rust type (a test fails when they drift).
crd:
	$(CARGO) run --quiet -- crd > deploy/crd.yaml

# Regenerate docs/flags.md from --help (a test fails when it drifts).
docs:
	UPDATE_DOCS=1 $(CARGO) test --locked --test it ship::flags_doc

# Regenerate examples/delivery/*.injected.yaml from their inputs (a test fails when they drift).
examples:
	UPDATE_EXAMPLES=1 $(CARGO) test --locked --test it delivery_inject::examples

# The README's first command.
quickstart:
	$(CARGO) run --quiet -- plan --from fixtures/quickstart --now 2026-11-26T22:30:00Z --base-role-arn arn:aws:iam::123456789012:role/ --output diff
