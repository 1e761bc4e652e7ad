# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,mlperf,loadgen,tensorboard,onnx,tune]'
	touch $(STAMP)

install: $(STAMP)

# Train DLRM on the built-in planted synthetic data set and print AUC / log loss beside the
# Bayes-optimal values that the data set's hidden click model allows. Each run gets a new
# directory runs/dlrm-YYYYmmdd-HHMMSS.
run: $(STAMP)
	$(BIN)/dlrm train --preset tiny --data synthetic:planted --optimizer adagrad --lr 0.05 --batch-size 256 --max-samples 4000000 --eval-every 4000

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
