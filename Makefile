# xlb developer entry points. `make setup` is idempotent and fast when nothing changed.
SHELL := /bin/bash
.DEFAULT_GOAL := test

VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.xlb-installed
BCC_SRC     := /usr/lib/python3/dist-packages/bcc
APT_PKGS    := python3-venv python3-bpfcc bpfcc-tools linux-headers-amd64 iproute2 ethtool nftables systemd bird2 keepalived
PYTEST_ARGS ?= tests

.PHONY: setup apt venv bcc-link test demo bench fuzz soak man completion clean

setup: apt $(STAMP) bcc-link

# Install the Debian packages only when one is missing (dpkg -s fails for it).
apt:
	@missing=""; for p in $(APT_PKGS); do \
	    dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "apt: installing$$missing"; \
	    SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Debian's bcc (pure Python over libbcc via ctypes) is linked in by itself, so the venv does not
# see the rest of dist-packages.
bcc-link: $(PY)
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	if [ "$$(readlink "$$site/bcc" 2>/dev/null)" != "$(BCC_SRC)" ]; then \
	    rm -rf "$$site/bcc" && ln -s $(BCC_SRC) "$$site/bcc" && echo "linked $$site/bcc -> $(BCC_SRC)"; \
	fi

# Reinstall only when the package metadata changed.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/xlb demo

# Hostile packets: the fuzzer of tests/test_fuzz.py with the full count (a few minutes; root). FUZZ_SEED repeats a run.
FUZZ_COUNT ?= 1000000
FUZZ_SEED  ?=
fuzz: setup
	$(PY) tests/fuzz.py $(FUZZ_COUNT) $(FUZZ_SEED)

# The soak (docs/reliability.md "Soak", "Faults"): tests/test_soak.py with SOAK_SECONDS per test (10 minutes
# each; the suite runs 60 s and 24 s). Root. Prints its figures as "soak figures: {...}".
SOAK_SECONDS ?= 600
soak: setup
	SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q -s -m soak tests/test_soak.py

# The bench runs Katran side by side (bench/katran_peer.py); its loader needs libbpf.so.1.
APT_PKGS    += libbpf1

# Full benchmark (a few minutes): JSON, plots and summary under build/bench/ (see docs/performance.md).
BENCH_ARGS ?=
bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# The man page xlb(8) and bash/zsh completion, generated from the CLI's argparse parser (argparse-manpage, shtab:
# both in the [test] extra; xlb/completion.py marks the path arguments). Install as README's "Install" says.
GEN_DIR ?= build
man: $(STAMP)
	@mkdir -p $(GEN_DIR)/man
	$(VENV)/bin/argparse-manpage --module xlb.cli --function build_parser --prog xlb --project-name xlb \
	    --version "$$($(PY) -c 'import xlb; print(xlb.__version__)')" --manual-section 8 \
	    --manual-title "System Administration" --description "XDP layer-4 load balancer with LVS semantics" \
	    --include tools/xlb.8.include --output $(GEN_DIR)/man/xlb.8

completion: $(STAMP)
	@mkdir -p $(GEN_DIR)/completion
	$(PY) -m shtab --shell=bash --prog=xlb --error-unimportable xlb.completion.parser -o $(GEN_DIR)/completion/xlb
	$(PY) -m shtab --shell=zsh --prog=xlb --error-unimportable xlb.completion.parser -o $(GEN_DIR)/completion/_xlb

clean:
	rm -rf $(VENV) build *.egg-info xlb.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
