# The README's second command: `make test` builds everything and runs every test, both tiers:
# the fast tier (`cargo test`, Rust only) and the full tier (`--features full-tier`: moto and the
# AWS CLI from .venv, the SDK matrix's Node and Go clients, kubectl, openssl, unshare).
.PHONY: test venv node go lint check crd docs examples quickstart fuzz

CARGO ?= cargo
PYTHON ?= python3

# Python test tools (moto's STS server, the AWS CLI) live in .venv at the repo root; the tests
# look for them there. The stamp's name carries a checksum of the pinned requirements, so a
# changed pin reinstalls and an unchanged one costs nothing.
VENV := .venv
REQUIREMENTS := tests/requirements.txt
VENV_STAMP := $(VENV)/.installed-$(firstword $(shell cksum < $(REQUIREMENTS)))

# The SDK matrix's JavaScript client: the AWS SDK for JavaScript v3 at the exact versions of
# tests/sdk/package-lock.json, installed into tests/sdk/node_modules; a stamp named after the lock
# file's checksum, like the venv's, so an unchanged lock costs nothing.
NODE_DIR := tests/sdk
NODE_LOCK := $(NODE_DIR)/package-lock.json
NODE_STAMP := $(NODE_DIR)/node_modules/.installed-$(firstword $(shell cksum < $(NODE_LOCK)))

# The SDK matrix's Go clients: Go and the AWS SDK for Go v1 and v2 from Debian's packages (their
# sources land in /usr/share/gocode, where the tests build the clients offline in GOPATH mode; no
# Go module proxy is needed). Installed with apt-get only when `go` or the sources are missing.
GO_PACKAGES := golang-go golang-github-aws-aws-sdk-go-dev golang-github-aws-aws-sdk-go-v2-dev
GOCODE := /usr/share/gocode/src/github.com/aws
GO_SOURCES := $(GOCODE)/aws-sdk-go/service/sts $(GOCODE)/aws-sdk-go-v2/service/sts $(GOCODE)/aws-sdk-go-v2/config
APT_INSTALL := apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(GO_PACKAGES)

test: venv node go
	$(CARGO) test --locked --features full-tier

venv: $(VENV_STAMP)

$(VENV_STAMP):
	@rm -f $(VENV)/.installed-*
	@$(VENV)/bin/python -c '' 2>/dev/null || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(VENV)/bin/python -m pip install --disable-pip-version-check --no-input --quiet -r $(REQUIREMENTS)
	@touch $@

node: $(NODE_STAMP)

$(NODE_STAMP):
	npm ci --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error
	@touch $@

go:
	@if command -v go >/dev/null $(foreach d,$(GO_SOURCES),&& [ -d $(d) ]); then :; \
	elif [ "$$(id -u)" = 0 ]; then $(APT_INSTALL); \
	elif command -v sudo >/dev/null; then sudo sh -c '$(APT_INSTALL)'; \
	else echo "Go or the AWS SDK for Go is missing; as root, run: $(APT_INSTALL)" >&2; exit 1; fi

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets --all-features -- -D warnings

check: lint test

# Regenerate deploy/crd.yaml from the Rust type (a test fails when they drift).
crd:
	$(CARGO) run --quiet -- crd > deploy/crd.yaml

# Regenerate docs/flags.md from --help and the metric table of docs/operations.md from the
# binary's /metrics (tests fail when they drift; the metric table needs the venv's moto).
docs: venv
	UPDATE_DOCS=1 $(CARGO) test --locked --test it ship::docs::flags_doc
	UPDATE_DOCS=1 $(CARGO) test --locked --features full-tier --test it metrics_doc::

# Regenerate examples/delivery/*.injected.yaml from their inputs (a test fails when they drift).
examples:
	UPDATE_EXAMPLES=1 $(CARGO) test --locked --test it delivery_inject::examples

# The README's first command.
quickstart:
	$(CARGO) run --quiet -- plan --from fixtures/quickstart --now 2026-11-26T22:30:00Z --base-role-arn arn:aws:iam::123456789012:role/ --output diff

# libFuzzer on every cargo-fuzz target of fuzz/ for FUZZ_SECONDS each (not part of `make test`,
# which replays the corpus instead; see fuzz/README.md). Installs cargo-fuzz if missing. Inputs
# libFuzzer finds go to fuzz/target/corpus/; crashes to fuzz/artifacts/. The stable toolchain
# builds the targets without AddressSanitizer (`--sanitizer none`).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= references secrets objects pod_mutation
FUZZ_BUILD_FLAGS ?= --sanitizer none --codegen-units 16
FUZZ_RUN_FLAGS ?= -rss_limit_mb=4096 -dict=fuzz/tokens.dict

fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	$(CARGO) fuzz build $(FUZZ_BUILD_FLAGS)
	@set -e; for target in $(FUZZ_TARGETS); do \
		case $$target in pod_mutation) seeds=pods ;; *) seeds=$$target ;; esac; \
		mkdir -p fuzz/target/corpus/$$target; \
		echo "fuzz $$target for $(FUZZ_SECONDS)s"; \
		$(CARGO) fuzz run $(FUZZ_BUILD_FLAGS) $$target fuzz/target/corpus/$$target fuzz/corpus/$$seeds -- \
			-max_total_time=$(FUZZ_SECONDS) $(FUZZ_RUN_FLAGS); \
	done
