# The two commands a newcomer runs on a fresh machine; each installs what it needs first:
#
#   make demo   the main job: the end-to-end Star Elastic demo (into demo_out/)
#   make test   the test suite
#
# Other targets: install, bench (GPU), cmake-build, device-wheels, clean.
# Variables: PYTHON (the interpreter that makes the venv), VENV, TORCH_VERSION.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.14.1
CUTLASS_VERSION ?= 4.2.0.0
MAMBA_VERSION ?= 2.3.2.post1
PY := $(VENV)/bin/python
CSRC := $(shell find csrc -name '*.cu' -o -name '*.cpp' -o -name '*.h' -o -name '*.cuh') csrc/sources.txt

.PHONY: install demo test bench cmake-build device-wheels clean

# Third-party packages: torch (a CUDA build; it also runs on CPU-only machines), the test tools,
# and the CUTLASS headers (nvidia-cutlass without its runtime dependencies, which we do not use).
$(VENV)/.deps: requirements-dev.txt
	@echo "make: installing torch $(TORCH_VERSION), the test tools and the CUTLASS headers into $(VENV) (a few minutes)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)" -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps "nvidia-cutlass==$(CUTLASS_VERSION)"
	# mamba-ssm's pure-PyTorch references are test oracles; its CUDA code is not needed.
	MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE $(PY) -m pip install --quiet \
		--no-build-isolation --no-deps "mamba-ssm==$(MAMBA_VERSION)"
	touch $@

# This package, editable, built against the torch above (hence --no-build-isolation). Rebuilt when
# the C++/CUDA sources or the build files change; Python edits need no rebuild. pip runs verbosely
# so that the CUDA build's progress can be shown: scripts/build_progress.py prints one line per
# ninja step ([n/N] file) and keeps pip's whole output in $(VENV)/build.log.
$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(CSRC) scripts/build_progress.py
	@echo "make: installing star-elastic-kernels; with nvcc present this builds the CUDA extension (several minutes)"
	$(PY) scripts/build_progress.py --log $(VENV)/build.log -- $(PY) -m pip install -v --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.built

demo: install
	$(PY) -m star_elastic_kernels.info
	$(PY) -m star_elastic.cli demo --out demo_out
	@echo "make: the command line is $(VENV)/bin/star-elastic (or run: source $(VENV)/bin/activate);"
	@echo "      $(VENV)/bin/star-elastic --help lists its commands, the README shows examples"

test: install
	$(PY) -m pytest tests -q

bench: install
	$(PY) -m pytest bench --benchmark-only

# The standalone CMake build of the same extension (for C++ consumers), into build/.
cmake-build: install
	cmake -B build -G Ninja -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build -j 2

# Wheels the GPU machine lacks, carried there in .wheels/ for bench/device_check.sh.
device-wheels: $(VENV)/.deps
	$(PY) -m pip download --quiet --no-deps -d .wheels "nvidia-cutlass==$(CUTLASS_VERSION)"
	MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE $(PY) -m pip wheel --quiet --no-deps \
		--no-build-isolation -w .wheels "mamba-ssm==$(MAMBA_VERSION)"

clean:
	rm -rf build demo_out star_elastic_kernels/_C*.so star_elastic_kernels/_build_status.json
