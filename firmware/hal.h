/* hal.h - the hardware abstraction layer the firmware core (fw.c) calls.
 *
 * A port implements every function below for its board (docs/firmware.md says what each must
 * do, how long it may take and which MCU peripheral a real board would use). The host build
 * (firmware-in-the-loop, sim/cfirmware.py) implements them with the simulator's physics through
 * function pointers: see FW_HAL_CALLBACKS in fw.h.
 *
 * Conventions: SI units (V, A, degC), times in microseconds of the board clock (fw_advance's
 * argument), pixels 1-based (0 = none), aging channels 0-based. No HAL function may call back
 * into the core except where stated. */
#ifndef FW_HAL_H
#define FW_HAL_H

#include <stddef.h>
#include <stdint.h>

#include "firmware_protocol.h"

/* ---- identity, clocks, UART, watchdog ---------------------------------------------------- */
/* A random 32-bit number (boot id): a TRNG, or a hash of the unique device id and an RTC. */
uint32_t hal_random_u32(void);
/* Monotonic milliseconds of real time (SysTick): the watchdog counts host silence with it. */
uint64_t hal_millis(void);
/* Queue bytes on the UART towards the host (DMA ring); is_stream: stream data the port may drop
 * when its TX buffer is full (replies and events must not be dropped). Never blocks long. */
void hal_uart_write(const uint8_t *data, size_t len, int is_stream);
/* Kick the MCU's independent hardware watchdog (IWDG): the main loop calls it every pass. */
void hal_watchdog_kick(void);

/* ---- safety ---------------------------------------------------------------------------------- */
/* 1 when the interlock permits outputs (a GPIO read, debounced). */
int hal_interlock_closed(void);
/* Substrate temperatures then the board's, degC (ADC + NTC or I2C sensors); returns the count
 * written (at most max). */
uint8_t hal_temperatures(float *out, uint8_t max);

/* ---- SMU and multiplexer --------------------------------------------------------------------- */
typedef struct {
    uint8_t mode;        /* FP_SMU_MODE_SOURCE_V / _SOURCE_I */
    uint8_t range_index; /* of the measured quantity, 0xFF autorange */
    uint8_t output_on;
    uint16_t pixel;       /* multiplexer: 1-based, 0 none */
    float compliance;    /* A (source V) or V (source I) */
    float integration_ms;
    float level;         /* V or A */
} hal_smu_state_t;
/* Apply the SMU state (DAC setpoints, compliance clamp, relay or analog mux) at once. Turning
 * the output off must be immediate (the interlock path calls it). */
void hal_smu_apply(const hal_smu_state_t *s);
/* One measurement of the present state, integrating s->integration_ms (the core has already
 * waited that long): voltage and current (ADC), and the selected pixel's photodiode.
 * flags: FP_SAMPLE_FLAGS_COMPLIANCE / PD_SATURATED / AUTORANGED. *pd_gain in: the pixel's gain,
 * out: the gain used. */
void hal_smu_measure(const hal_smu_state_t *s, float *voltage_v, float *current_a,
                     float *photodiode_a, uint8_t *pd_gain, uint8_t autorange, uint8_t *flags);

/* ---- sweep point: read a point of an on-board sweep ------------------------------------------ */
/* The core set the point's voltage with hal_smu_apply right after the previous point (sweep_start
 * for the first), so the source settled for dwell_ms and integrated for integration_ms; now fill
 * voltage_v, current_a, photodiode_a, pd_gain (in: the gain to use, out: the gain used,
 * autoranged when asked) and flags (COMPLIANCE when current-limited at compliance_a,
 * PD_SATURATED, AUTORANGED) of rec. v_set is the point's programmed voltage; dt_us the point's
 * duration (a model of the device ages it by that much). */
void hal_sweep_point(uint16_t pixel, float v_set, float compliance_a, float integration_ms,
                     uint8_t autorange, uint32_t dt_us, fp_sweep_point_t *rec);

/* ---- photodiodes ----------------------------------------------------------------------------- */
/* Average n readings of a pixel's photodiode (transimpedance amp + ADC), each integrating
 * integration_ms; *gain in/out (autoranged when autorange). flags as above. */
void hal_pd_read(uint16_t pixel, uint16_t n, float integration_ms, uint8_t *gain,
                 uint8_t autorange, float *mean_a, float *std_a, uint8_t *flags);

/* ---- aging drivers (one constant-current source per channel) --------------------------------- */
/* Drive pixel at current_a with voltage compliance compliance_v on channel ch (on at once). */
void hal_aging_on(uint16_t ch, uint16_t pixel, float current_a, float compliance_v);
/* Channel output off (immediate). */
void hal_aging_off(uint16_t ch);
/* Read channel ch at board time t_us: fills current_a, voltage_v, photodiode_a, pd_gain,
 * temperature_c and flags (SHORT / OPEN / COMPLIANCE as the driver's status pins say,
 * PD_SATURATED, AUTORANGED) of rec. *gain in/out: the channel's photodiode gain (autoranged). */
void hal_aging_sample(uint16_t ch, uint64_t t_us, uint8_t *gain, fp_aging_sample_t *rec);

/* ---- spectrometer ---------------------------------------------------------------------------- */
/* One spectrum of pixel at its present operating point, integrating integration_ms: counts
 * (n pixels, the capabilities' spectrometer_pixels), the mean dark level, flags (bit0 saturated),
 * and the pixel's voltage and current while it was taken. Returns 0, or -1 if the spectrometer
 * failed. */
int hal_spectrum(uint16_t pixel, float integration_ms, uint16_t *counts, uint16_t n,
                 float *dark_counts, uint8_t *flags, float *voltage_v, float *current_a);

/* ---- what the board has ---------------------------------------------------------------------- */
/* Fill the board's capabilities (ranges, gains, spectrometer calibration); called once at boot.
 * The core sets ring_depth, the aging channel counts and the range extension fields itself. */
void hal_capabilities(fp_capabilities_t *caps);

#endif /* FW_HAL_H */
