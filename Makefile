# Two commands for a fresh machine (as root): `make demo` and `make test` (README.md).
# Both set everything up first; the set-up is skipped when nothing changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: setup slurm demo weights test lint screenshot clean-demo

setup: $(STAMP)

# The demo's look-alikes (espeak-ng, ffmpeg) and the tests (ffmpeg) need Debian packages; the
# pipeline on real data needs neither them nor root (`pip install -r requirements.txt`, README).
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@command -v ffmpeg >/dev/null && command -v espeak-ng >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg espeak-ng; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# The embedded demo: the whole DAG on synthetic look-alike datasets, then the HTML report.
demo: setup
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES) all \
		--report results/report.html --report-after-run
	@echo "Demo finished. ConCluGen's linear evaluation against a majority guess (results/tables/headline.md):"
	@cat results/tables/headline.md
	@echo "Held-out cross-modal retrieval of the pretrained methods (results/tables/retrieval.md):"
	@cat results/tables/retrieval.md
	@echo "Collapse check of BYOL and DINO, rep_std against its floor (results/tables/collapse.md):"
	@cat results/tables/collapse.md
	@echo "Label efficiency: weighted F1 with a share of CAER's train labels (results/tables/label_efficiency.md):"
	@cat results/tables/label_efficiency.md
	@echo "A held-out look-alike clip (CAER's test split) through the exported ConCluGen model" \
		"(results/export/caer/conclugen; conclugen predict, README \"Use a trained model\"):"
	@$(BIN)/conclugen predict --model results/export/caer/conclugen "$$($(BIN)/python -c \
		'import pandas as pd; from conclugen.data.manifest import read_manifest; \
		m = read_manifest("results/caer/manifest.parquet")[0].set_index("sample_id"); \
		p = pd.read_parquet( \
		"results/downstream/caer/conclugen/finetune/seed0/predictions.parquet"); \
		print(m.loc[p.sample_id[p.split == "test"].iloc[0], "video"])')"
	@echo "Tables 1-5: results/tables/table{1..5}.{md,csv,tex}; report: results/report.html;" \
		"pretrained models: results/pretrain/<method>/; downstream runs:" \
		"results/downstream/<dataset>/<method>/; exported models: results/export/;" \
		"logs: results/logs/."

# Every configured weight into the caches the jobs read (rules/weights.smk), on a machine with
# internet: `make weights`, or `make weights CONFIG='config/config.yaml my_paths.yaml'`.
weights: setup
	env -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE -u HF_DATASETS_OFFLINE $(BIN)/snakemake \
		--cores 1 weights $(if $(CONFIG),--configfile $(CONFIG))

# The tests start a one-node SLURM cluster (tests/slurm_cluster.py) from Debian's packages.
slurm:
	@command -v slurmctld >/dev/null && command -v munged >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge; }

test: setup slurm
	$(BIN)/python -m pytest -ra

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check conclugen tests workflow
	$(BIN)/ruff format --check --preview README.md docs  # their Python code blocks (preview in ruff 0.17)
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --configfile config/demo.yaml --lint

# What a reader first sees: the report's landing page (the front page), rendered by a headless
# Chromium from Debian, as results/report/front_page.png (README "The report").
screenshot:
	@command -v chromium-headless-shell >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium-headless-shell; }
	chromium-headless-shell --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,3200 \
		--virtual-time-budget=10000 --screenshot=results/report/front_page.png \
		"file://$(CURDIR)/results/report.html"

clean-demo:
	rm -rf results/lookalike results/voxceleb2 results/caer results/meld results/mosei \
		results/pretrain results/downstream results/export results/tables results/figures \
		results/report.html results/report results/logs results/benchmarks .snakemake
