# The README's second command: `make test` builds everything and runs every test.
.PHONY: test lint check crd quickstart

CARGO ?= cargo

test:
	$(CARGO) test --locked

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

check: lint test

# Regenerate deploy/crd.yaml from the Rust type (a test fails when they drift).
crd:
	$(CARGO) run --quiet -- crd > deploy/crd.yaml

# The README's first command.
quickstart:
	$(CARGO) run --quiet -- plan --from fixtures/quickstart --now 2026-11-26T22:30:00Z --base-role-arn arn:aws:iam::123456789012:role/ --output diff
