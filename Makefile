# spinenet_tf developer commands. `make test` installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export TF_CPP_MIN_LOG_LEVEL ?= 2
# `make train` trains the embedded default; CONFIG=... MODEL_DIR=... for other experiments:
# a shipped experiment's name (retinanet/spinenet49_coco, custom_small) or a YAML file.
CONFIG ?= synthetic
# The run's name: the experiment's path below experiments/ with / as - (runs/maskrcnn-synthetic).
RUN_NAME := $(subst /,-,$(basename $(patsubst experiments/%,%,$(patsubst spinenet_tf/%,%,$(CONFIG)))))
MODEL_DIR ?= runs/$(RUN_NAME)
# `make export` exports MODEL_DIR's latest checkpoint to export/NAME (SavedModel + TFLite).
NAME ?= $(RUN_NAME)
QUANTIZE ?= none
# `make bench TPU_REPO=path`: a tensorflow/tpu checkout, for the TPU-format conversion row.
TPU_REPO ?=
# Tests are tiny models; two workers use both cores of a small machine.
PYTEST_WORKERS ?= 2

.PHONY: install test test-all lint format bench arch train eval export clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --durations=10

test-all: install
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "" --durations=10

lint: install
	$(BIN)/ruff format --check spinenet_tf tests benchmarks
	$(BIN)/ruff check spinenet_tf tests benchmarks

format: install
	$(BIN)/ruff format spinenet_tf tests benchmarks
	$(BIN)/ruff check --fix spinenet_tf tests benchmarks

bench: install
	$(BIN)/python -m benchmarks.backbone_table
	$(BIN)/python -m benchmarks.detector_table
	$(BIN)/python -m benchmarks.classifier_table
	$(BIN)/python -m benchmarks.target_assignment
	$(BIN)/python -m benchmarks.input_pipeline
	$(BIN)/python -m benchmarks.cpu_inference
	$(BIN)/python -m benchmarks.two_stage_inference
	$(BIN)/python -m benchmarks.training_throughput
	KERAS_BACKEND=jax $(BIN)/python -m benchmarks.accelerator_throughput
	$(BIN)/python -m benchmarks.accuracy_budget
	$(BIN)/python -m benchmarks.checkpoint_conversion $(if $(TPU_REPO),--tpu-repo $(TPU_REPO))
	$(BIN)/python -m benchmarks.plot
	$(BIN)/python -m benchmarks.export_formats --model-dir $(MODEL_DIR)
	$(BIN)/python -m benchmarks.deployment_latency --model-dir $(MODEL_DIR)

train: install
	$(BIN)/spinenet train --config $(CONFIG) --model-dir $(MODEL_DIR)

eval: install
	$(BIN)/spinenet eval --model-dir $(MODEL_DIR)

export: install
	$(BIN)/spinenet export --model-dir $(MODEL_DIR) --out export/$(NAME)
	$(BIN)/spinenet export --model-dir $(MODEL_DIR) --out export/$(NAME) --format tflite --quantize $(QUANTIZE)

arch: install
	$(BIN)/spinenet arch --model 49 --out docs/spinenet49.png

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
