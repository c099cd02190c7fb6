# The two commands a new machine needs: `make demo` and `make test`. Both set themselves up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
# checkov pins dozens of packages (some against ours): it lives in a virtualenv of its own.
CHECKOV_VERSION := 3.3.30
CHECKOV := .tools/checkov/bin/checkov
PROTOS := $(shell find proto -name '*.proto')
# The folders that each hold a part of the allxai namespace (pyproject.toml maps every package to one).
SOURCE_ROOTS := proto clients server trainer explainer

.PHONY: demo test lint typecheck layers proto proto-check buf-lint bench clean setup deploy-config tfs-protos

setup: $(STAMP) $(BUF) $(CHECKOV)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "allxai needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@# setuptools' editable finder maps each allxai.* package to its folder but hides the folders from
	@# tools that walk them (import-linter): name the source roots in a .pth too.
	printf '%s\n' $(addprefix $(CURDIR)/,$(SOURCE_ROOTS)) \
	  > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/allxai-source-roots.pth"
	touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

$(CHECKOV):
	$(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/python -m pip install --quiet --upgrade pip
	.tools/checkov/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)

## demo: train a small model, serve it in-process, classify and explain, write pictures to results/
demo: $(STAMP)
	$(BIN)/python scripts/demo.py --out results

## test: lint, type-check and run every test
test: setup lint typecheck layers
	$(BIN)/python -m pytest

lint: $(STAMP) $(BUF)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BUF) lint

typecheck: $(STAMP)
	$(BIN)/mypy -p allxai.contract -p allxai.client -p allxai.loadtest -p allxai.lis -p allxai.server \
	  -p allxai.trainer -p allxai.explainer

## layers: the import rules between the parts (contracts in pyproject.toml, [tool.importlinter])
layers: $(STAMP)
	$(BIN)/lint-imports

## bench: Explain against lime and the model floor (ALL-Net 224, InceptionV3 299); Classify through the
## gateway against the backend alone (concurrency 1 and 16); Classify idle and beside explanations; the domain
## gate's added cost per image; ~17 min on 2 cores
bench: $(STAMP)
	$(BIN)/python bench/explain_bench.py
	$(BIN)/python bench/gateway_bench.py
	$(BIN)/python bench/isolation_bench.py
	$(BIN)/python bench/gate_bench.py
	$(BIN)/python bench/prepare_bench.py

## proto: regenerate the committed Python code from proto/ (grpcio-tools + mypy-protobuf)
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto \
	  --python_out=proto --grpc_python_out=proto \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy --mypy_out=proto \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc --mypy_grpc_out=proto \
	  $(PROTOS)

## tfs-protos: regenerate proto/allxai/tfs_protos (TensorFlow Serving's messages without TensorFlow) from the
## descriptors of the installed tensorflow-serving-api (proto/allxai/tfs_protos/README.md)
tfs-protos: $(STAMP)
	$(BIN)/python scripts/tfs_protos.py

## deploy-config: write deploy/k8s/tfserving-common/tfserving-config.yaml from deploy/tfserving/*.config
deploy-config: $(STAMP)
	$(BIN)/python scripts/tfserving_configmap.py

clean:
	rm -rf results .pytest_cache .mypy_cache .ruff_cache
