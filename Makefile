# The README's two commands: `make demo` (main job end to end on the embedded dataset) and `make test`.
# Both install everything first: system tools (ffmpeg, espeak-ng), a venv, the package and its deps.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
# torch / torchaudio / torchvision releases known to work together
TORCH_PINS ?= torch==2.11.0 torchaudio==2.11.0 torchvision==0.26.0
# the read-only pretrained weights, when this checkout sits beside ../shared (CI, developers)
ifneq ($(wildcard $(SHARED)/weights),)
export AVEMO_WEIGHTS_DIR ?= $(abspath $(SHARED)/weights)
export AVEMO_SHARED ?= $(abspath $(SHARED))
endif

.PHONY: setup system-deps demo test test-unit bench lint clean

setup: system-deps $(VENV)/.installed

# ffmpeg + ffprobe, espeak-ng, and Python's venv module (Debian/Ubuntu ship it apart, as python3-venv);
# then, best effort on apt systems, jemalloc: the opt-in malloc of `avemo train` (train.allocator=jemalloc or
# auto; the default is glibc's, so a failed install is a warning, not a failure)
JEMALLOC_FOUND = ( for f in /usr/lib/*-linux-gnu/libjemalloc.so.2 /lib/*-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2 /usr/lib/libjemalloc.so.2; do [ -e "$$f" ] && exit 0; done; exit 1 )
system-deps:
	@if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null && command -v espeak-ng >/dev/null \
	    && $(PYTHON) -c "import ensurepip, venv" 2>/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg espeak-ng python3-venv >/dev/null \
	  || { echo "setup failed: could not apt-get install ffmpeg espeak-ng python3-venv" >&2; exit 1; }; \
	else echo "setup failed: please install ffmpeg (with ffprobe), espeak-ng and Python's venv module" >&2; exit 1; fi
	@command -v ffprobe >/dev/null || { echo "setup failed: ffprobe not found after install" >&2; exit 1; }
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { echo "setup failed: $(PYTHON) has no venv/ensurepip module" >&2; exit 1; }
	@if ! $(JEMALLOC_FOUND) && command -v apt-get >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libjemalloc2 >/dev/null; } 2>/dev/null \
	  || echo "setup: could not apt-get install libjemalloc2; train.allocator=jemalloc will not be available (glibc's malloc, the default, is unaffected)" >&2; \
	fi

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/pip || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[dev]' $(TORCH_PINS)
	$(BIN)/python -c "import torch, torchaudio, torchvision, webdataset, distributed, ffmpeg, retinaface" \
	  || { echo "setup failed: the venv cannot import its dependencies" >&2; exit 1; }
	touch $@

demo: setup
	$(BIN)/avemo demo --out demo

test: setup
	$(BIN)/python -m pytest -q

# the unit tier alone: pure logic, no media, no weights, no ../shared (under a minute)
test-unit: setup
	$(BIN)/python -m pytest -q -m unit

bench: setup
	$(BIN)/python bench/build_shards.py

lint: setup
	$(BIN)/hadolint docker/Dockerfile docker/Dockerfile.cpu

clean:
	rm -rf demo .pytest_cache
