# Quick start: `make run` (set up and start the app), `make test` (set up and run every test).
# Both create .venv on first use and reinstall when pyproject.toml changes.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTHON ?= python3
PORT ?= 8501

.PHONY: venv venv-embeddings system-deps run test lint test-unit test-e2e bench worker serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The optional local embedding model, for its tests: torch first and pinned
# to the CPU build, or pip would fetch a multi-GB CUDA build.
EMB_STAMP := $(VENV)/.installed-embeddings
$(EMB_STAMP): $(STAMP)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,embeddings]'
	touch $(EMB_STAMP)

venv-embeddings: $(EMB_STAMP)

# Debian packages the tests need: Chromium for the browser test, emoji fonts,
# node for javascript sandbox runs. Installs only what is missing.
system-deps:
	bash scripts/system-deps.sh

run: venv
	$(VENV)/bin/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true

worker: venv
	$(VENV)/bin/ace worker

serve: venv
	$(VENV)/bin/ace serve

test: venv venv-embeddings system-deps lint test-unit test-e2e

# The lint gate: ruff on the whole tree, mypy on core/, and the layers of core/ (import-linter);
# all three are configured in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-unit: venv
	$(VENV)/bin/pytest -q -m "not e2e" tests

# A separate pytest run: pytest-playwright's event loop breaks later asyncio.run() calls.
test-e2e: venv
	$(VENV)/bin/pytest -q -m e2e tests/e2e

bench: venv
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache artifacts

# A real small model on CPU for trying episodes end to end: SmolLM2-135M-Instruct (GGUF, taken from
# a PyPI wheel) behind an OpenAI-compatible endpoint (node-llama-cpp, tools/real_model/serve.mjs).
# `make real-model-serve` runs it in the foreground on REAL_MODEL_PORT; `make real-model-episodes N=3`
# starts it, runs N easy tasks through `ace run` on a throwaway database, prints a summary, stops it.
REAL_MODEL := tools/real_model
REAL_MODEL_PORT ?= 8088
REAL_MODEL_GGUF := $(REAL_MODEL)/.cache/SmolLM2-135M-Instruct.Q4_1.gguf
REAL_MODEL_NPM := $(REAL_MODEL)/node_modules/.installed
N ?= 10

.PHONY: real-model-serve real-model-episodes

# Only the linux-x64 CPU build (a direct dependency): --omit=optional skips the CUDA/Vulkan builds,
# --ignore-scripts the postinstall that would try to compile llama.cpp from a download. Not `npm ci`:
# it refuses a lock file without the other platforms' builds, which the registry here does not have.
$(REAL_MODEL_NPM): $(REAL_MODEL)/package.json $(REAL_MODEL)/package-lock.json
	cd $(REAL_MODEL) && npm install --omit=optional --ignore-scripts --no-audit --no-fund
	touch $@

$(REAL_MODEL_GGUF): | $(STAMP)
	$(PY) $(REAL_MODEL)/fetch_model.py

real-model-serve: $(REAL_MODEL_NPM) $(REAL_MODEL_GGUF)
	cd $(REAL_MODEL) && PORT=$(REAL_MODEL_PORT) node serve.mjs

real-model-episodes: venv $(REAL_MODEL_NPM) $(REAL_MODEL_GGUF)
	OPENAI_BASE_URL=http://127.0.0.1:$(REAL_MODEL_PORT)/v1 OPENAI_API_KEY=local ACE_MODEL=smollm2-135m \
		$(PY) $(REAL_MODEL)/episodes.py -n $(N) --start-server
