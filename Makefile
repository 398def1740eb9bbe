# The book's two commands: `make book` renders it, `make test` proves it. Each sets itself up:
# it creates .venv when it is missing and installs requirements.txt whenever that file changed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book test lab bench clean

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

lab: $(STAMP)  ## JupyterLab on the chapters
	$(BIN)/jupyter lab book

bench: $(STAMP)  ## the benchmarks in benchmarks/
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf _build book/data book/checkpoints
