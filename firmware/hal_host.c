/* hal_host.c - the HAL of the host build (firmware in the loop): every hal_* function calls a
 * function pointer the host program installs with fw_host_set_hal() (sim/cfirmware.py sets
 * them to the simulator's physics through ctypes). Flat scalar arguments only, so a ctypes
 * caller needs no struct layouts. */
#include <string.h>

#include "fw.h"
#include "hal.h"

typedef struct {
    uint32_t (*random_u32)(void);
    uint64_t (*millis)(void);
    void (*uart_write)(const uint8_t *data, size_t len, int is_stream);
    int (*interlock_closed)(void);
    uint8_t (*temperatures)(float *out, uint8_t max);
    /* mode, range, on, pixel, compliance, integration_ms, level */
    void (*smu_apply)(uint8_t, uint8_t, uint8_t, uint16_t, float, float, float);
    /* out: v, i, pd (float[3]); gain in/out; autorange; flags out */
    void (*smu_measure)(float *out3, uint8_t *gain, uint8_t autorange, uint8_t *flags);
    /* pixel, v_set, compliance, integration, autorange, dt_us; out: v, i, pd; gain in/out; flags */
    void (*sweep_point)(uint16_t, float, float, float, uint8_t, uint32_t, float *out3, uint8_t *gain, uint8_t *flags);
    void (*pd_read)(uint16_t pixel, uint16_t n, float integration_ms, uint8_t *gain, uint8_t autorange,
                    float *out2, uint8_t *flags);
    void (*aging_on)(uint16_t ch, uint16_t pixel, float current_a, float compliance_v);
    void (*aging_off)(uint16_t ch);
    /* out: current, voltage, pd, temperature; gain in/out; flags out */
    void (*aging_sample)(uint16_t ch, uint64_t t_us, uint8_t *gain, float *out4, uint8_t *flags);
    /* out: dark, v, i; flags out; returns 0 or -1 */
    int (*spectrum)(uint16_t pixel, float integration_ms, uint16_t *counts, uint16_t n, float *out3, uint8_t *flags);
    /* the capabilities, as a packed capabilities payload (the Python codec builds it) */
    size_t (*capabilities)(uint8_t *buf, size_t cap);
} fw_host_hal_t;

static fw_host_hal_t H;

void fw_host_set_hal(const fw_host_hal_t *h) { H = *h; }
size_t fw_host_hal_size(void) { return sizeof(fw_host_hal_t); }

uint32_t hal_random_u32(void) { return H.random_u32(); }
uint64_t hal_millis(void) { return H.millis(); }
void hal_uart_write(const uint8_t *data, size_t len, int is_stream) { H.uart_write(data, len, is_stream); }
void hal_watchdog_kick(void) {}
int hal_interlock_closed(void) { return H.interlock_closed(); }
uint8_t hal_temperatures(float *out, uint8_t max) { return H.temperatures(out, max); }

void hal_smu_apply(const hal_smu_state_t *s) {
    H.smu_apply(s->mode, s->range_index, s->output_on, s->pixel, s->compliance, s->integration_ms, s->level);
}

void hal_smu_measure(const hal_smu_state_t *s, float *voltage_v, float *current_a, float *photodiode_a,
                     uint8_t *pd_gain, uint8_t autorange, uint8_t *flags) {
    float o[3] = {0, 0, 0};
    (void)s;
    H.smu_measure(o, pd_gain, autorange, flags);
    *voltage_v = o[0]; *current_a = o[1]; *photodiode_a = o[2];
}

void hal_sweep_point(uint16_t pixel, float v_set, float compliance_a, float integration_ms, uint8_t autorange,
                     uint32_t dt_us, fp_sweep_point_t *rec) {
    float o[3] = {0, 0, 0};
    uint8_t flags = 0;
    H.sweep_point(pixel, v_set, compliance_a, integration_ms, autorange, dt_us, o, &rec->pd_gain, &flags);
    rec->voltage_v = o[0]; rec->current_a = o[1]; rec->photodiode_a = o[2];
    rec->flags = flags;
}

void hal_pd_read(uint16_t pixel, uint16_t n, float integration_ms, uint8_t *gain, uint8_t autorange,
                 float *mean_a, float *std_a, uint8_t *flags) {
    float o[2] = {0, 0};
    H.pd_read(pixel, n, integration_ms, gain, autorange, o, flags);
    *mean_a = o[0]; *std_a = o[1];
}

void hal_aging_on(uint16_t ch, uint16_t pixel, float current_a, float compliance_v) {
    H.aging_on(ch, pixel, current_a, compliance_v);
}
void hal_aging_off(uint16_t ch) { H.aging_off(ch); }

void hal_aging_sample(uint16_t ch, uint64_t t_us, uint8_t *gain, fp_aging_sample_t *rec) {
    float o[4] = {0, 0, 0, 0};
    uint8_t flags = 0;
    H.aging_sample(ch, t_us, gain, o, &flags);
    rec->current_a = o[0]; rec->voltage_v = o[1]; rec->photodiode_a = o[2]; rec->temperature_c = o[3];
    rec->pd_gain = *gain;
    rec->flags = flags;
}

int hal_spectrum(uint16_t pixel, float integration_ms, uint16_t *counts, uint16_t n, float *dark_counts,
                 uint8_t *flags, float *voltage_v, float *current_a) {
    float o[3] = {0, 0, 0};
    int rc = H.spectrum(pixel, integration_ms, counts, n, o, flags);
    *dark_counts = o[0];
    if (voltage_v) *voltage_v = o[1];
    if (current_a) *current_a = o[2];
    return rc;
}

void hal_capabilities(fp_capabilities_t *caps) {
    static uint8_t buf[FP_MAX_PAYLOAD];
    size_t n = H.capabilities(buf, sizeof buf);
    fp_capabilities_unpack(caps, buf, n);
}
