# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Each creates .venv/ on first use and installs the toolkit, its plugins, the default models
# and the data packages (Fashion-MNIST from apt where make runs as root); a second run only
# re-checks (fast).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: install fashion-mnist demo test check clean

install: $(STAMP) fashion-mnist

# Fashion-MNIST is Debian's dataset-fashion-mnist package (30 MB): installed where make runs as
# root with apt (CI), once; elsewhere its benchmark pairs and test are skipped, saying how to get it.
fashion-mnist:
	@if [ -d $(FASHION_MNIST) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else \
		echo "Fashion-MNIST not installed (needs root and apt): sudo apt-get install dataset-fashion-mnist;" \
			"until then its benchmark pairs and test are skipped"; \
	fi

$(STAMP): pyproject.toml plugins/onnx/pyproject.toml plugins/torch/pyproject.toml plugins/http/pyproject.toml requirements-assets.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[data,test]' -e plugins/onnx -e plugins/torch -e plugins/http
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-assets.txt
	$(BIN)/python -m blackbox_reprog.zoo
	# MLServer (the third-party V2 server of the conformance tests) in its own venv: it would
	# downgrade onnx's protobuf here. Same numpy/scikit-learn, so the test's model file loads.
	$(BIN)/python -m pip freeze --exclude-editable | grep -iE '^(numpy|scipy|scikit-learn|joblib)==' > $(VENV)/mlserver-pins.txt
	test -x $(VENV)/mlserver/bin/python || $(PYTHON) -m venv $(VENV)/mlserver
	$(VENV)/mlserver/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/mlserver/bin/python -m pip install --quiet mlserver==1.7.1 mlserver-sklearn==1.7.1 -c $(VENV)/mlserver-pins.txt
	touch $(STAMP)

demo: install
	$(BIN)/bbreprog demo

test: install
	$(BIN)/python -m pytest -q

# The fast subset (under 3 minutes here): every module, without the tests marked slow (full
# runs, the smoke suite, the kill test, the docs' long pages). CI runs `make test`.
check: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs
