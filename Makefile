# Two commands on a fresh machine: `make demo` and `make test`. Both bootstrap .venv first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.privinfer-installed

SPU_VENV := .venv-spu
SPU_STAMP := $(SPU_VENV)/.privinfer-spu-installed

ORION_VENV := .venv-orion
ORION_STAMP := $(ORION_VENV)/.privinfer-orion-installed

.PHONY: venv spu orion demo test test-slow fuzz bench clean

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

# the Orion peer (benchmarks only, issue 13): its wheel needs torchvision and pins scipy, so it gets its own venv;
# torchvision 0.28.0 is the release paired with the CPU torch 2.13.0 on disk (another pulls a CUDA torch)
orion: $(ORION_STAMP)

$(ORION_STAMP): Makefile
	@command -v $(PY) >/dev/null || { echo "needs $(PY)"; exit 1; }
	test -x $(ORION_VENV)/bin/python || $(PY) -m venv $(ORION_VENV)
	$(ORION_VENV)/bin/pip install -q --upgrade pip
	$(ORION_VENV)/bin/pip install -q torch==2.13.0 torchvision==0.28.0 orion-fhe==1.0.2
	touch $(ORION_STAMP)

demo: $(STAMP) $(SPU_STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP) $(SPU_STAMP)
	PRIVINFER_REQUIRE_SPU=1 $(BIN)/python -m pytest -q -m 'not slow'

test-slow: $(STAMP) $(SPU_STAMP)
	PRIVINFER_REQUIRE_SPU=1 $(BIN)/python -m pytest -q -m slow --ignore=tests/test_fuzz.py  # the fuzz module's slow tests: make fuzz

fuzz: $(STAMP) $(SPU_STAMP)
	PRIVINFER_REQUIRE_SPU=1 PRIVINFER_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -s tests/test_fuzz.py

bench: $(STAMP)
	$(BIN)/privinfer bench --protocol plain --model minionn-mnist --json benchmarks/results/plain.json

clean:
	rm -rf $(VENV) $(SPU_VENV) $(ORION_VENV) build *.egg-info
