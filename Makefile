# The two commands of README: `make demo` (the main job) and `make test` (the whole suite).
# Both set up what they need on a fresh Debian/Ubuntu machine (scripts/bootstrap.sh).
.PHONY: demo test lint generate bench clean

VENV := .venv/bin
OUT ?= demo-out

demo:
	@scripts/bootstrap.sh
	$(VENV)/station demo --out $(OUT)

test:
	@scripts/bootstrap.sh --test
	$(VENV)/python -m firmware_protocol check
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/python -m pytest -q $(PYTEST_ARGS)

lint:
	$(VENV)/ruff check .
	$(VENV)/mypy

generate:
	$(VENV)/python -m firmware_protocol check --write

bench:
	@scripts/bootstrap.sh
	$(VENV)/python bench/bench_protocol.py

clean:
	rm -rf .venv demo-out .pytest_cache .mypy_cache .ruff_cache
