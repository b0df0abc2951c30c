# The two commands of README: `make demo` (the main job) and `make test` (the whole suite).
# Both set up what they need on a fresh Debian/Ubuntu machine (scripts/bootstrap.sh).
.PHONY: demo test lint generate bench clean firmware firmware-arm

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
	$(VENV)/mypy --strict -p firmware_protocol -p station
	$(VENV)/python -m pytest -q $(PYTEST_ARGS)

lint:
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/mypy --strict -p firmware_protocol -p station

generate:
	$(VENV)/python -m firmware_protocol check --write
	$(VENV)/python -m station.params --write

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

# the same core for a Cortex-M3 (ARM MPS2 AN385, as qemu-system-arm -M mps2-an385 emulates it),
# with a HAL modelling one LED pixel (firmware/arm/); sizes for a small MCU
ARM_CC := arm-none-eabi-gcc
ARM_SIZES := -DFW_MAX_CHANNELS=1 -DFW_MAX_PIXELS=1 -DFW_AGING_RING_MAX=120 -DFW_SWEEP_RING_MAX=32 \
	-DFW_SPECTRUM_RING_MAX=1 -DFW_SPECTRUM_PIXELS=64 -DFW_REPLY_CACHE=4 -DFW_QUEUE_DEPTH=2
ARM_CFLAGS := -std=c99 -Wall -Wextra -Werror -Os -mcpu=cortex-m3 -mthumb -ffunction-sections \
	-fdata-sections $(ARM_SIZES)
ARM_SRC := firmware/fw.c firmware/arm/hal_mps2.c firmware/arm/startup.c
build/firmware/fw-mps2-an385.elf: $(ARM_SRC) $(FW_HDR) firmware/arm/mps2_an385.ld
	@mkdir -p build/firmware
	$(ARM_CC) $(ARM_CFLAGS) -Ifirmware_protocol -Ifirmware $(ARM_SRC) -o $@ \
		-T firmware/arm/mps2_an385.ld -nostartfiles --specs=nano.specs --specs=nosys.specs \
		-u _printf_float -Wl,--gc-sections -lm
	arm-none-eabi-size $@

firmware-arm: build/firmware/fw-mps2-an385.elf

firmware: build/firmware/libfw_host.so $(if $(shell command -v $(ARM_CC)),firmware-arm)

clean:
	rm -rf build .venv demo-out .pytest_cache .mypy_cache .ruff_cache
