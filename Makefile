# `make demo` and `make test` each work on a fresh machine: they create .venv and install uwav first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo bench gpu-wheels clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collected no tests: that is a failure, not a pass. Two xdist workers:
# much of the suite waits on subprocesses and Prefect servers, so the 2-core CI machine runs it in
# ~60 % of the serial time; --dist loadfile keeps a module's fixtures (generated media) in one worker.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not benchmark" -n 2 --dist loadfile; status=$$?; \
	if [ $$status -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$status

demo: $(STAMP)
	$(BIN)/uwav demo --out demo-out

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(BIN)/python $$script || exit 1; done

# Wheels of uwav's dependencies that a lent GPU machine lacks (Python 3.12, no network there), at
# the versions installed here, split in two parts of < 64 MiB each: see benchmarks/gpu_session.sh.
GPU_WHEEL_PLATFORMS := --python-version 3.12 --implementation cp --only-binary=:all: --no-deps \
	$(foreach n,17 24 27 28 31 34,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64
gpu-wheels: $(STAMP)
	for part in "train:pydantic pydantic-core annotated-types typing-inspection typing-extensions polars polars-runtime-32" \
	            "features:av zarr numcodecs donfig google-crc32c soxr open_clip_torch ftfy wcwidth"; do \
		dir=.whl/$${part%%:*}; mkdir -p $$dir; \
		pins=$$(for name in $${part#*:}; do echo "$$name==$$($(BIN)/python -m pip show $$name | sed -n 's/^Version: //p')"; done); \
		$(PYTHON) -m pip download -q $(GPU_WHEEL_PLATFORMS) -d $$dir $$pins || exit 1; \
	done
	du -sh .whl/*

clean:
	rm -rf $(VENV) demo-out .pytest_cache
