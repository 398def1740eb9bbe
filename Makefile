# The book's two commands: `make book` renders it, `make test` proves it. Each sets itself up:
# it creates .venv when it is missing and installs requirements.txt whenever that file changed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book test test-portable lint lab bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	touch $@

book: $(STAMP)  ## render the book to _build/html (warnings fail the build)
	$(BIN)/jupyter-book build . -W -n --keep-going
	@echo "The book is at $(CURDIR)/_build/html/index.html"

test: $(STAMP)  ## unit tests, then every chapter under strict nbval (options in pyproject.toml)
	$(BIN)/python -m pytest

# The committed outputs must hold on any reader's CPU, not only on the one that executed them.
# ATEN_CPU_CAPABILITY makes PyTorch use the kernels of an older processor (avx2: most laptops;
# default: no vector extensions, a proxy for ARM and others); OMP_NUM_THREADS sets its threads.
PORTABLE := avx2:1 avx2:2 default:1 default:2 native:1

test-portable: $(STAMP)  ## every chapter under strict nbval with other CPU kernels and thread counts
	@for run in $(PORTABLE); do \
	  cap=$${run%%:*}; threads=$${run##*:}; \
	  echo "== test-portable: kernels $$cap, OMP_NUM_THREADS=$$threads"; \
	  if [ $$cap = native ]; then unset ATEN_CPU_CAPABILITY; else export ATEN_CPU_CAPABILITY=$$cap; fi; \
	  OMP_NUM_THREADS=$$threads $(BIN)/python -m pytest book -q || exit 1; \
	done; echo "test-portable: every chapter passed strict nbval under $(PORTABLE)"

lint: $(STAMP)  ## ruff check and ruff format --check (configured in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

lab: $(STAMP)  ## JupyterLab on the chapters
	$(BIN)/jupyter lab book

# Lightning is timed beside companion.fit: the optional `bench` extra (pyproject.toml) installs it once.
bench: $(STAMP)  ## the benchmarks in benchmarks/ (installs the `bench` extra, Lightning, when it is missing)
	$(BIN)/python -c "import lightning" 2>/dev/null || $(BIN)/python -m pip install -e '.[bench]'
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf _build book/data book/checkpoints
