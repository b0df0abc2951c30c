# The two commands of README: `make demo` (the main job) and `make test` (the whole suite).
# Both set up what they need on a fresh Debian/Ubuntu machine (scripts/bootstrap.sh).
.PHONY: demo test lint generate bench clean firmware

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

# the reference firmware (firmware/): the core as a host shared library for the
# firmware-in-the-loop (`station sim --firmware c`); sim/cfirmware.py builds it the same way
FW_SRC := firmware/fw.c firmware/hal_host.c
FW_HDR := firmware/fw.h firmware/hal.h firmware/fw_names.h firmware_protocol/firmware_protocol.h
FW_CFLAGS := -std=c99 -Wall -Wextra -Werror -pedantic -O2
build/firmware/libfw_host.so: $(FW_SRC) $(FW_HDR)
	@mkdir -p build/firmware
	gcc $(FW_CFLAGS) -fPIC -shared -Ifirmware_protocol -Ifirmware $(FW_SRC) -o $@ -lm

firmware: build/firmware/libfw_host.so

clean:
	rm -rf build .venv demo-out .pytest_cache .mypy_cache .ruff_cache
