/* hal_mps2.c - the HAL and main loop of the reference firmware on ARM's MPS2 AN385 (Cortex-M3),
 * as qemu-system-arm -M mps2-an385 emulates it: UART0 (CMSDK APB UART) to the host, SysTick for
 * the clock. The board has no analog front end in QEMU, so this HAL models one LED pixel in C:
 * a diode with series resistance behind the SMU and one aging driver, a photodiode over it, a
 * 64-pixel spectrometer seeing a green emission line. A real port replaces the model functions
 * (led_*) with its ADC/DAC drivers; docs/firmware.md says what each hal_* must do. */
#include <math.h>
#include <string.h>

#include "../fw.h"
#include "../hal.h"

/* ---- the MCU ------------------------------------------------------------------------------ */
#define SYSCLK_HZ 25000000u
typedef struct { volatile uint32_t DATA, STATE, CTRL, INTSTATUS, BAUDDIV; } cmsdk_uart_t;
#define UART0 ((cmsdk_uart_t *)0x40004000u)
#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static volatile uint32_t ms_ticks;
void SysTick_Handler(void) { ms_ticks++; }

static uint64_t now_us(void) {
    uint32_t ms, cvr;
    do { ms = ms_ticks; cvr = SYST_CVR; } while (ms != ms_ticks);
    return (uint64_t)ms * 1000u + (SYSCLK_HZ / 1000u - 1u - cvr) / (SYSCLK_HZ / 1000000u);
}

uint64_t hal_millis(void) { return ms_ticks; }

static uint32_t rng_state = 0x9E3779B9u;
static uint32_t xorshift(void) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 17; rng_state ^= rng_state << 5;
    return rng_state;
}
uint32_t hal_random_u32(void) {
    rng_state ^= SYST_CVR * 2654435761u + ms_ticks;
    return xorshift();
}
/* small zero-mean noise, relative amplitude rel */
static float noise(float rel) { return rel * ((float)(xorshift() & 0xFFFF) / 32768.0f - 1.0f); }

void hal_uart_write(const uint8_t *data, size_t len, int is_stream) {
    size_t i;
    (void)is_stream;
    for (i = 0; i < len; i++) {
        while (UART0->STATE & 1u) {}
        UART0->DATA = data[i];
    }
}
void hal_watchdog_kick(void) {}
int hal_interlock_closed(void) { return 1; }
uint8_t hal_temperatures(float *out, uint8_t max) {
    if (max < 2) return 0;
    out[0] = 25.0f + noise(0.01f);
    out[1] = 30.0f + noise(0.01f);
    return 2;
}

/* ---- one LED pixel ----------------------------------------------------------------------------- */
#define LED_I0 1e-22f     /* A, diode saturation current */
#define LED_NVT 0.0514f   /* V, ideality x thermal voltage */
#define LED_RS 200.0f     /* ohm, series resistance */
#define PD_ETA 0.02f      /* A of photocurrent per A of LED current (fresh) */
#define PD_DARK 2e-11f    /* A */
#define AGING_TAU_H 50.0f /* h at 1 mA */

static float led_voltage(float i) { return i <= 0 ? 0.0f : LED_NVT * logf(i / LED_I0 + 1.0f) + i * LED_RS; }
static float led_current(float v) {
    float lo = 0.0f, hi = v > 0 ? v / LED_RS : 0.0f;
    int k;
    for (k = 0; k < 40 && v > 0; k++) {
        float mid = 0.5f * (lo + hi);
        if (led_voltage(mid) > v) hi = mid; else lo = mid;
    }
    return lo;
}
static float led_dose_h; /* equivalent hours at 1 mA */
static float led_efficiency(void) { return expf(-led_dose_h / AGING_TAU_H); }

static const float pd_gains[5] = {1e4f, 1e5f, 1e6f, 1e7f, 1e8f};
#define PD_FS 2.5f
static float pd_read_once(float i_true, uint8_t *gain, uint8_t autorange, uint8_t *flags) {
    float v;
    if (autorange) {
        int g = 4;
        while (g > 0 && fabsf(i_true) * pd_gains[g] >= 0.8f * PD_FS) g--;
        if (g != *gain) *flags |= FP_SAMPLE_FLAGS_AUTORANGED;
        *gain = (uint8_t)g;
    }
    v = i_true * (1.0f + noise(1e-3f)) * pd_gains[*gain];
    if (fabsf(v) >= PD_FS) { *flags |= FP_SAMPLE_FLAGS_PD_SATURATED; v = v > 0 ? PD_FS : -PD_FS; }
    return v / pd_gains[*gain];
}

/* ---- SMU ---------------------------------------------------------------------------------------- */
static hal_smu_state_t smu;
void hal_smu_apply(const hal_smu_state_t *s) { smu = *s; }

static void smu_solve(float *v, float *i, int *hit) {
    *hit = 0;
    if (!smu.output_on || !smu.pixel) { *v = smu.output_on ? smu.level : 0.0f; *i = 0.0f; return; }
    if (smu.mode == FP_SMU_MODE_SOURCE_V) {
        *v = smu.level;
        *i = led_current(*v);
        if (*i > smu.compliance) { *i = smu.compliance; *v = led_voltage(*i); *hit = 1; }
    } else {
        *i = smu.level;
        *v = led_voltage(*i);
        if (*v > smu.compliance) { *v = smu.compliance; *i = led_current(*v); *hit = 1; }
    }
}

void hal_smu_measure(const hal_smu_state_t *s, float *voltage_v, float *current_a, float *photodiode_a,
                     uint8_t *pd_gain, uint8_t autorange, uint8_t *flags) {
    float v, i;
    int hit;
    (void)s;
    smu_solve(&v, &i, &hit);
    *flags = hit ? FP_SAMPLE_FLAGS_COMPLIANCE : 0;
    *voltage_v = v * (1.0f + noise(1e-4f));
    *current_a = i * (1.0f + noise(1e-4f));
    *photodiode_a = smu.pixel ? pd_read_once(PD_ETA * led_efficiency() * i + PD_DARK, pd_gain, autorange, flags) : 0.0f;
}

void hal_sweep_point(uint16_t pixel, float v_set, float compliance_a, float integration_ms, uint8_t autorange,
                     uint32_t dt_us, fp_sweep_point_t *rec) {
    float i = led_current(v_set), v = v_set;
    uint8_t flags = 0;
    (void)pixel; (void)integration_ms;
    if (i > compliance_a) { i = compliance_a; v = led_voltage(i); flags |= FP_SAMPLE_FLAGS_COMPLIANCE; }
    rec->voltage_v = v * (1.0f + noise(1e-4f));
    rec->current_a = i * (1.0f + noise(1e-4f));
    rec->photodiode_a = pd_read_once(PD_ETA * led_efficiency() * i + PD_DARK, &rec->pd_gain, autorange, &flags);
    rec->flags = flags;
    led_dose_h += (float)dt_us / 3.6e9f * powf(i / 1e-3f, 1.7f);
}

void hal_pd_read(uint16_t pixel, uint16_t n, float integration_ms, uint8_t *gain, uint8_t autorange,
                 float *mean_a, float *std_a, uint8_t *flags) {
    float v, i, sum = 0, sum2 = 0;
    int hit;
    uint16_t k;
    (void)pixel; (void)integration_ms;
    smu_solve(&v, &i, &hit);
    *flags = 0;
    for (k = 0; k < n; k++) {
        float x = pd_read_once(PD_ETA * led_efficiency() * i + PD_DARK, gain, autorange, flags);
        sum += x; sum2 += x * x;
    }
    *mean_a = sum / n;
    *std_a = n > 1 ? sqrtf(fmaxf(0.0f, (sum2 - sum * sum / n) / (n - 1))) : 0.0f;
}

/* ---- the aging driver ----------------------------------------------------------------------------- */
static float aging_i;
static uint64_t aging_last_us;
void hal_aging_on(uint16_t ch, uint16_t pixel, float current_a, float compliance_v) {
    (void)ch; (void)pixel; (void)compliance_v;
    aging_i = current_a;
    aging_last_us = now_us();
}
void hal_aging_off(uint16_t ch) { (void)ch; aging_i = 0; }
void hal_aging_sample(uint16_t ch, uint64_t t_us, uint8_t *gain, fp_aging_sample_t *rec) {
    uint8_t flags = 0;
    (void)ch;
    if (t_us > aging_last_us) led_dose_h += (float)(t_us - aging_last_us) / 3.6e9f * powf(aging_i / 1e-3f, 1.7f);
    aging_last_us = t_us;
    rec->current_a = aging_i * (1.0f + noise(1e-4f));
    rec->voltage_v = led_voltage(aging_i) * (1.0f + noise(1e-4f));
    rec->photodiode_a = pd_read_once(PD_ETA * led_efficiency() * aging_i + PD_DARK, gain, 1, &flags);
    rec->pd_gain = *gain;
    rec->temperature_c = 25.0f + noise(0.01f);
    rec->flags = flags;
}

/* ---- spectrometer: 64 pixels, 400 + 5 p nm, a Gaussian line at 510 nm -------------------------- */
#define SPEC_PIXELS 64
int hal_spectrum(uint16_t pixel, float integration_ms, uint16_t *counts, uint16_t n, float *dark_counts,
                 uint8_t *flags, float *voltage_v, float *current_a) {
    float v, i, dark = 100.0f + 0.01f * integration_ms;
    int hit;
    uint16_t p;
    (void)pixel;
    smu_solve(&v, &i, &hit);
    *flags = 0;
    for (p = 0; p < n; p++) {
        float wl = 400.0f + 5.0f * (float)p, x = (wl - 510.0f) / 10.6f;
        float c = dark + 3e3f * i * led_efficiency() * integration_ms * expf(-0.5f * x * x) + noise(3.0f);
        if (c >= 65535.0f) { c = 65535.0f; *flags = 1; }
        counts[p] = (uint16_t)(c < 0 ? 0 : c);
    }
    *dark_counts = dark;
    if (voltage_v) *voltage_v = v;
    if (current_a) *current_a = i;
    return 0;
}

void hal_capabilities(fp_capabilities_t *c) {
    static const float vr[2] = {2.0f, 20.0f}, ir[4] = {1e-6f, 1e-4f, 1e-2f, 0.1f};
    memcpy(c->smu_voltage_ranges_v, vr, sizeof vr); c->smu_voltage_ranges_v_count = 2;
    memcpy(c->smu_current_ranges_a, ir, sizeof ir); c->smu_current_ranges_a_count = 4;
    c->max_voltage_v = 10.0f;
    c->max_current_a = 0.1f;
    c->max_aging_current_a = 0.02f;
    c->aging_compliance_v = 12.0f;
    memcpy(c->pd_gains_v_per_a, pd_gains, sizeof pd_gains); c->pd_gains_v_per_a_count = 5;
    c->pd_full_scale_v = PD_FS;
    c->pd_adc_bits = 16;
    c->spectrometer_pixels = SPEC_PIXELS;
    c->wavelength_cal[0] = 400.0; c->wavelength_cal[1] = 5.0; c->wavelength_cal_count = 2;
    c->spectrometer_max_counts = 65535u;
    c->board_tick_us = 1000u;
    c->max_integration_ms = 10000.0f;
}

/* ---- main loop --------------------------------------------------------------------------------- */
int main(void) {
    static const fw_config_t cfg = {
        1, 1, 1, FW_AGING_RING_MAX, FW_SWEEP_RING_MAX, FW_SPECTRUM_RING_MAX, 0, 1, 2,
        "mps2-an385 c-core 0.1.0", "QEMU-AN385-0001",
    };
    uint64_t next_status_ms = 1000;
    SYST_RVR = SYSCLK_HZ / 1000u - 1u;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt, enable */
    UART0->BAUDDIV = 16;
    UART0->CTRL = 3u; /* TX and RX enabled */
    if (fw_init(&cfg) != 0) for (;;) {}
    fw_set_link(1);
    for (;;) {
        while (UART0->STATE & 2u) {
            uint8_t b = (uint8_t)UART0->DATA;
            fw_rx(&b, 1);
        }
        fw_advance(now_us(), 1);
        fw_check_watchdog();
        if (hal_millis() >= next_status_ms) {
            fw_emit_status();
            next_status_ms += 1000;
        }
        hal_watchdog_kick();
    }
}
