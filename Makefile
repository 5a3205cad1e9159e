# One-command set-up: `make demo` and `make test` install everything into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
DS_OP_BUILT := from deepspeed.git_version_info import installed_ops as o; assert o['deepspeed_shm_comm']

.PHONY: install install-eval demo test test-all lint bench clean

install: $(STAMP)

# Torch goes first with an exact pin (a CPU wheel on the build machines; an unpinned
# torch would pull several GB of CUDA packages), then the rest, then this package.
# DeepSpeed builds against the installed torch, hence --no-build-isolation.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet $(TORCH_PIN)
	$(BIN)/python -m pip install --quiet --no-build-isolation -r requirements.txt -r requirements-dev.txt
	# Without CUDA, DeepSpeed's CPU shared-memory collective op (deepspeed_shm_comm) is built
	# into the package (DS_BUILD_SHM_COMM=1). Otherwise DeepSpeed JIT-compiles it on the
	# first multi-process CPU run, for minutes, under a lock in ~/.cache/torch_extensions
	# that an interrupted build leaves behind (every later run then waits on it). The version
	# is read from the package metadata: importing deepspeed prints a warning on stdout.
	if $(BIN)/python -c "import torch, sys; sys.exit(torch.cuda.is_available())" && \
	   ! $(BIN)/python -c "$(DS_OP_BUILT)" 2>/dev/null; then \
	  DS_ACCELERATOR=cpu DS_BUILD_SHM_COMM=1 $(BIN)/python -m pip install --quiet \
	    --no-build-isolation --no-cache-dir --force-reinstall --no-deps \
	    "deepspeed==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("deepspeed"))')"; \
	  $(BIN)/python -c "$(DS_OP_BUILT)"; \
	fi
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps -e .
	# The lm-evaluation-harness adapter is tested against lm-eval's model API only; its heavy
	# dependencies (datasets, evaluate, ...) are needed to run benchmarks, not the tests.
	$(BIN)/python -m pip install --quiet --no-deps "lm-eval>=0.4.8,<0.5"
	touch $(STAMP)

# lm-evaluation-harness with its dependencies (datasets, dill, evaluate, ...) for
# `python -m tide_lightning.evaluation.lm_eval_adapter`; torch and transformers stay as pinned.
install-eval: install
	$(BIN)/python -m pip install --quiet "lm-eval>=0.4.8,<0.5"
	$(BIN)/python -c "import lm_eval.evaluator, lm_eval.tasks"

demo: install
	$(BIN)/python -m tide_lightning demo

test: install
	$(BIN)/python -m pytest -q

test-all: install
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: install
	$(BIN)/ruff check tide_lightning tests benchmarks
	$(BIN)/ruff format --check tide_lightning tests benchmarks

bench: install
	$(BIN)/python benchmarks/loss_memory.py
	$(BIN)/python benchmarks/alignment_throughput.py
	$(BIN)/python benchmarks/teacher_sharding.py
	$(BIN)/python benchmarks/data_throughput.py
	$(BIN)/python benchmarks/step_overhead.py
	$(BIN)/python benchmarks/humaneval_canonical.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
