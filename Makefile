# Two commands for a fresh machine (as root): `make demo` and `make test` (README.md).
# Both set everything up first; the set-up is skipped when nothing changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: setup demo test lint clean-demo

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v ffmpeg >/dev/null && command -v espeak-ng >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg espeak-ng; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# The embedded demo: the whole DAG on synthetic look-alike datasets.
demo: setup
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES) all
	@echo "Demo finished: manifests in results/<dataset>/manifest.parquet, face tracks and" \
		"previews in results/<dataset>/faces/, subtitles in results/caer/subtitles/," \
		"failure ledgers in results/<dataset>/failures.tsv, logs in results/logs/."

test: setup
	$(BIN)/python -m pytest -ra

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check conclugen tests workflow
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --configfile config/demo.yaml --lint

clean-demo:
	rm -rf results/lookalike results/voxceleb2 results/caer results/meld results/mosei \
		results/logs results/benchmarks .snakemake
