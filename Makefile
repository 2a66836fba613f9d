# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.privinfer-installed

SPU_VENV := .venv-spu
SPU_STAMP := $(SPU_VENV)/.privinfer-spu-installed

.PHONY: venv spu demo test fuzz bench clean

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

# protocol `cheetah` (2PC without a dealer) runs SecretFlow SPU's parties under their own interpreter: spu
# pins jax 0.4.34 and numpy 1.26.4, which the main venv (torch, TenSEAL, CrypTen) must not share
spu: $(SPU_STAMP)

$(SPU_STAMP): Makefile
	@command -v $(PY) >/dev/null || { echo "needs $(PY)"; exit 1; }
	test -x $(SPU_VENV)/bin/python || $(PY) -m venv $(SPU_VENV)
	$(SPU_VENV)/bin/pip install -q --upgrade pip
	$(SPU_VENV)/bin/pip install -q spu==0.9.5 jax==0.4.34 jaxlib==0.4.34 numpy==1.26.4
	touch $(SPU_STAMP)

demo: $(STAMP) $(SPU_STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP) $(SPU_STAMP)
	PRIVINFER_REQUIRE_SPU=1 $(BIN)/python -m pytest -q -m 'not slow'

fuzz: $(STAMP) $(SPU_STAMP)
	PRIVINFER_REQUIRE_SPU=1 PRIVINFER_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -s tests/test_fuzz.py

bench: $(STAMP)
	$(BIN)/privinfer bench --protocol plain --model minionn-mnist --json benchmarks/results/plain.json

clean:
	rm -rf $(VENV) $(SPU_VENV) build *.egg-info
