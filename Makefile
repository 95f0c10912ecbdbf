PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-keras test test-slow data chromium lint bench-zoo bench-timm bench-detection \
	bench-speed bench-depth bench-deploy bench-int8 bench-fmnist-int8 bench-keras-overflow \
	bench-accuracy-peers-setup clean

$(STAMP): pyproject.toml requirements-test.txt constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip==26.3
	$(BIN)/pip install -q -r requirements-test.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

data:
	@bash scripts/ensure_data.sh

chromium:
	@bash scripts/ensure_chromium.sh

demo: $(STAMP) data
	PYTHONUNBUFFERED=1 $(BIN)/python -m filterprune.examples.fashion_mnist

demo-keras: $(STAMP) data
	PYTHONUNBUFFERED=1 $(BIN)/python -m filterprune.examples.fashion_mnist_keras

# TensorFlow's tests run in their own process: TF and torch's compiler stack (triton)
# crash when loaded into one interpreter.
test: $(STAMP) data chromium
	$(BIN)/python -m pytest -q --timeout=1200 --ignore=tests/tensorflow $(PYTEST_ARGS)
	$(BIN)/python -m pytest -q --timeout=1200 tests/tensorflow $(PYTEST_ARGS)

test-slow: $(STAMP) data
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench-zoo: $(STAMP)
	$(BIN)/python benchmarks/zoo.py

bench-timm: $(STAMP)
	$(BIN)/python benchmarks/timm_zoo.py

bench-detection: $(STAMP)
	$(BIN)/python benchmarks/detection_zoo.py

bench-speed: $(STAMP)
	$(BIN)/python benchmarks/analysis_speed.py

bench-depth: $(STAMP)
	$(BIN)/python benchmarks/depth_scaling.py

bench-deploy: $(STAMP)
	$(BIN)/python benchmarks/deploy.py

bench-int8: $(STAMP)
	$(BIN)/python benchmarks/deploy_int8.py

bench-fmnist-int8: $(STAMP) data
	$(BIN)/python benchmarks/fmnist_int8.py

bench-keras-overflow: $(STAMP) data
	$(BIN)/python benchmarks/keras_overflow_seeds.py

# One venv per peer of the accuracy benchmark (.venv-peers/, about 5.5 GB each).
bench-accuracy-peers-setup:
	bash benchmarks/accuracy/peers/setup.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) .cache
