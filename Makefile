# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.privinfer-installed

.PHONY: venv demo test fuzz bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v $(PY) >/dev/null || { echo "needs $(PY)"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch 2.13.0 CPU lies on this machine's disk; pinning it avoids a multi-GB CUDA download
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,ray]'
	# CrypTen 0.4.1's declared deps (sklearn) break pip; its real imports are in pyproject.toml
	$(BIN)/pip install -q --no-deps crypten==0.4.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q -m 'not slow'

fuzz: $(STAMP)
	PRIVINFER_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -s tests/test_fuzz.py

bench: $(STAMP)
	$(BIN)/privinfer bench --protocol plain --model minionn-mnist --json benchmarks/results/plain.json

clean:
	rm -rf $(VENV) build *.egg-info
