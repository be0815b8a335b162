# DeepLIMa — every target runs inside .venv, which `make install` creates on first use.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# detectron2 is not on PyPI under its own name; sal-detectron2 repackages upstream 0.6+ (pure-Python
# fallback when its compiled _C does not match the interpreter). Its wheel is tagged cp310 only.
D2_VERSION := 0.7.2
D2_DIR := $(VENV)/wheels
D2_WHEEL := $(D2_DIR)/sal_detectron2-$(D2_VERSION)-py3-none-any.whl

DATA ?= data/synthetic
N_STUDIES ?= 50
CONFIG ?=
OPTS ?=
OUT ?= output
# Schedule of the ablations: empty keeps each script's default (mass_det.ablate: 2000 iterations
# per detector; calc_seg.ablate: SOLVER.EPOCHS of the config).
ITERS ?=
EPOCHS ?=

# Debian packages the tests and the PACS workflow use: dicom3tools (dciodvfy checks the synthetic DICOM
# files), Orthanc with its DICOMweb plugin (a local PACS).
SYSTEM_PACKAGES := dicom3tools orthanc orthanc-dicomweb

.PHONY: help install system-packages test lint mutation demo data train-mass train-calc ablate-mass ablate-calc bench clean

help:
	@echo "make demo         generate synthetic mammograms and run the pipeline on them"
	@echo "make test         run the test suite"
	@echo "make lint         ruff over the repository"
	@echo "make mutation     run tools/mutation_check.py"
	@echo "make install      create .venv with every dependency (done automatically by other targets)"
	@echo "                  and install the Debian packages $(SYSTEM_PACKAGES) when missing (as root)"
	@echo "make data         N_STUDIES synthetic studies in DATA (training data of the targets below)"
	@echo "make train-mass   train the mass detector on DATA: CONFIG (default"
	@echo "                  mass_det/configs/faster_rcnn_R50_FPN_FL_NL.yaml), OPTS"
	@echo "make train-calc   train the calcification U-Net on DATA: CONFIG (default"
	@echo "                  calc_seg/configs/unet_gn.yaml), OPTS"
	@echo "make ablate-mass  Table 1 (three detectors) on DATA into OUT/ablate_mass: ITERS, OPTS"
	@echo "make ablate-calc  Tables 3-4 (U-Net BN/LN/GN) on DATA into OUT/ablate_calc: EPOCHS, CONFIG, OPTS"
	@echo "make bench        run the benchmarks in bench/"
	@echo "make clean        remove demo_out, output, bench_out"
	@echo ""
	@echo "variables (make TARGET NAME=value):"
	@echo "  DATA=$(DATA)  canonical dataset folder (make data writes it)"
	@echo "  N_STUDIES=$(N_STUDIES)  studies that make data generates"
	@echo "  OUT=$(OUT)  output folder of the ablations"
	@echo "  CONFIG=FILE  YAML config of train-mass / train-calc, base config of ablate-calc"
	@echo "  OPTS='KEY VALUE ...'  config overrides of train-* and ablate-*"
	@echo "  ITERS=N  training iterations per detector in ablate-mass (default 2000)"
	@echo "  EPOCHS=N  epochs per U-Net in ablate-calc (default: the config's SOLVER.EPOCHS)"
	@echo "  e.g. make ablate-mass ITERS=200 OPTS='MODEL.DEVICE cpu'"

install: system-packages $(STAMP)

# Installs what is missing with apt-get when run as root; otherwise says what to install and goes on.
system-packages:
	@missing=""; \
	command -v dciodvfy >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	if ! command -v Orthanc >/dev/null 2>&1 && ! test -x /usr/sbin/Orthanc; then \
	  missing="$$missing orthanc orthanc-dicomweb"; \
	elif command -v dpkg-query >/dev/null 2>&1 && \
	     ! dpkg-query -W -f='$${Status}' orthanc-dicomweb 2>/dev/null | grep -q "ok installed"; then \
	  missing="$$missing orthanc-dicomweb"; \
	fi; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else \
	  echo "missing Debian packages:$$missing (install them as root: apt-get install -y --no-install-recommends$$missing); going on without them"; \
	fi

$(STAMP): requirements.txt requirements-test.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -r requirements.txt -r requirements-test.txt
	@if ! $(PIP) show -q sal-detectron2 2>/dev/null; then \
	  mkdir -p $(D2_DIR) && \
	  $(PIP) download --disable-pip-version-check -q --no-deps --only-binary=:all: --python-version 3.10 \
	    sal-detectron2==$(D2_VERSION) -d $(D2_DIR) && \
	  mv -f $(D2_DIR)/sal_detectron2-$(D2_VERSION)-*.whl $(D2_WHEEL) && \
	  $(PIP) install --disable-pip-version-check -q --no-deps $(D2_WHEEL); \
	fi
	$(PIP) install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(PY) -W ignore -c "import detectron2, torch, segmentation_models_pytorch, pydicom; print('environment ready: torch', torch.__version__, '| detectron2', detectron2.__version__)"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .

mutation: $(STAMP)
	$(PY) tools/mutation_check.py

data: $(DATA)/masses.json

# Full-field synthetic studies (two views each); point DATA at a converted public dataset instead.
$(DATA)/masses.json: | $(STAMP)
	$(PY) -m datasets.synthetic --out $(DATA) --n $(N_STUDIES) --seed 0

demo: $(STAMP)
	$(PY) -m scripts.demo --out demo_out

train-mass: $(STAMP) $(DATA)/masses.json
	$(PY) -m mass_det.train_net --config-file $(or $(CONFIG),mass_det/configs/faster_rcnn_R50_FPN_FL_NL.yaml) \
	  DATASETS.CANONICAL.ROOTS "['synthetic=$(DATA)']" $(OPTS)

train-calc: $(STAMP) $(DATA)/masses.json
	$(PY) -m calc_seg.train_net --config-file $(or $(CONFIG),calc_seg/configs/unet_gn.yaml) DATA.ROOT $(DATA) $(OPTS)

ablate-mass: $(STAMP) $(DATA)/masses.json
	$(PY) -m mass_det.ablate --data $(DATA) --out $(OUT)/ablate_mass $(if $(ITERS),--iters $(ITERS)) $(OPTS)

ablate-calc: $(STAMP) $(DATA)/masses.json
	$(PY) -m calc_seg.ablate --data $(DATA) --out $(OUT)/ablate_calc $(if $(EPOCHS),--epochs $(EPOCHS)) \
	  $(if $(CONFIG),--config-file $(CONFIG)) $(OPTS)

bench: $(STAMP)
	$(PY) bench/preprocess.py
	$(PY) bench/mass_detection.py
	$(PY) bench/calc_segmentation.py
	$(PY) bench/pipeline.py

clean:
	rm -rf demo_out output bench_out .pytest_cache
