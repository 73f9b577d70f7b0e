# Two commands on a fresh machine with python3 (3.11+), git and make:
#   make demo   the whole pipeline on a synthetic archive, on a local Ray
#   make test   the test suite
# Both install what they need: uv (from PyPI) into .tools, the locked environment into .venv.

UV := .tools/bin/uv
VENV := .venv
export UV_PYTHON_DOWNLOADS := never

.PHONY: demo test test-learning lint bench install gpu-bundle
install: $(VENV)/.synced

$(UV): tools/bootstrap_uv.py
	python3 tools/bootstrap_uv.py .tools

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen
	touch $@

demo: install
	$(VENV)/bin/usv-ray demo --out runs/demo
	cp runs/demo/results.md docs/demo-results.md  # the committed page of the demo's tables

test: install
	tools/ensure_chromium.sh
	$(VENV)/bin/python -m pytest --durations=20

test-learning: install  # the full-size demo and CM learn (~25 min), outside make test
	$(VENV)/bin/python -m pytest -m learning -s tests/test_learning.py

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	for b in benchmarks/*.py; do $(VENV)/bin/python $$b || exit 1; done

# The GPU check (tools/gpu_check.sh): the wheels a GPU machine without network lacks, for its
# Python 3.12, under the 64 MiB a device call carries. There, in one call carrying
# dist/gpu-bundle: tools/gpu_check.sh (writes $$OUT/gpu_check.md; about 8 minutes).
gpu-bundle: install
	$(VENV)/bin/python tools/gpu_bundle.py --out dist/gpu-bundle
