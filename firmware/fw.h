/* fw.h - the LED test board's firmware core: portable C99, no heap, no OS.
 *
 * The main loop of a port:
 *     fw_init(&cfg);
 *     for (;;) { fw_rx(uart_bytes, n); fw_advance(hal_now_us(), 1); fw_check_watchdog();
 *                once a second: fw_emit_status(); hal_watchdog_kick(); }
 * Interrupt-driven inputs (interlock edge, aging driver fault pins) call fw_interlock() and
 * fw_aging_fault() from the main loop (set a flag in the ISR). The behaviour is the Python
 * board's (sim/board.py), message for message; docs/firmware.md is the porting guide. */
#ifndef FW_H
#define FW_H

#include <stddef.h>
#include <stdint.h>

#include "firmware_protocol.h"

/* Compile-time sizes (static buffers): override with -D for a small MCU. */
#ifndef FW_MAX_CHANNELS
#define FW_MAX_CHANNELS 256
#endif
#ifndef FW_MAX_PIXELS
#define FW_MAX_PIXELS 256
#endif
#ifndef FW_AGING_RING_MAX
#define FW_AGING_RING_MAX 200000u
#endif
#ifndef FW_SWEEP_RING_MAX
#define FW_SWEEP_RING_MAX 20000u
#endif
#ifndef FW_SPECTRUM_RING_MAX
#define FW_SPECTRUM_RING_MAX 256u
#endif
#ifndef FW_REPLY_CACHE
#define FW_REPLY_CACHE 64
#endif
#ifndef FW_QUEUE_DEPTH
#define FW_QUEUE_DEPTH 16
#endif
#ifndef FW_SPECTRUM_PIXELS
#define FW_SPECTRUM_PIXELS 300
#endif

typedef struct {
    uint8_t n_substrates;
    uint16_t pixels_per_substrate;
    uint16_t n_channels;        /* aging channels, 1..FW_MAX_CHANNELS */
    uint32_t aging_ring_depth;  /* <= FW_AGING_RING_MAX */
    uint32_t sweep_ring_depth;  /* <= FW_SWEEP_RING_MAX */
    uint32_t spectrum_ring_depth; /* <= FW_SPECTRUM_RING_MAX */
    uint32_t first_seq;         /* first seq of every stream at power-on (tests: the 2^32 wrap) */
    uint8_t reboot_loses_ring;  /* rings and the clock epoch are lost at a reset */
    uint8_t pd_default_gain;    /* photodiode gain index after a reset */
    char firmware_version[33];
    char serial_number[33];
} fw_config_t;

/* Power-on: rings empty, seqs at first_seq, new boot id. Returns 0, or -1 for a bad config. */
int fw_init(const fw_config_t *cfg);
/* A reset (watchdog, brown-out, the host's fault injection): volatile state lost, outputs off,
 * new boot id; the rings survive in retained RAM unless reboot_loses_ring. */
void fw_reboot(void);
/* Bytes from the UART, any chunking. Requests run in the next fw_advance. */
void fw_rx(const uint8_t *data, size_t len);
/* Do everything due up to target_us (inclusive: also what is due exactly at target_us).
 * Returns the board time reached. */
uint64_t fw_advance(uint64_t target_us, int inclusive);
/* Whether a host is there to receive frames (USB CDC DTR, or a TCP client in the loop). */
void fw_set_link(int up);
/* The unsolicited once-a-second status. */
void fw_emit_status(void);
/* Compare host silence (hal_millis) with set_watchdog's timeout; act once per silence. */
void fw_check_watchdog(void);
/* The interlock changed (1 open, 0 closed): outputs off at once when it opens. */
void fw_interlock(int open);
/* An aging driver reports a fault: cause FW_STOP_SHORT / _OPEN / _COMPLIANCE. */
#define FW_STOP_COMMAND 0
#define FW_STOP_SHORT 1
#define FW_STOP_OPEN 2
#define FW_STOP_COMPLIANCE 3
#define FW_STOP_INTERLOCK 4
#define FW_STOP_WATCHDOG 5
void fw_aging_fault(uint16_t ch, uint8_t cause);

/* ---- introspection (the firmware-in-the-loop and tests) ---------------------------------- */
typedef struct {
    uint64_t produced[3];
    uint64_t replayed[3];
    uint64_t unsent[3];
    uint32_t frames_built, valid_frames_in, frame_errors_in, resends, retries_ignored;
    uint32_t requests, executed, errors, reboots, watchdog_expiries, events;
    /* by message id (requests processed, requests executed) and by code (errors, events) */
    uint32_t requests_by_id[64], executed_by_id[64], errors_by_code[16], events_by_code[16];
} fw_counters_t;
const fw_counters_t *fw_counters(void);
uint32_t fw_boot_id(void);
uint64_t fw_now_us(void);
/* Board clock as messages carry it (fw_now_us minus the epoch). */
uint64_t fw_clock_us(void);
/* Running channel's pixel (0: channel idle). */
uint16_t fw_channel_pixel(uint16_t ch);
/* A running channel's schedule: its next sample time and interval (0, 0 when idle). */
void fw_channel_schedule(uint16_t ch, uint64_t *next_t, uint64_t *interval_us);
/* Time of the next request to run or finish (UINT64_MAX when none is queued or running). */
uint64_t fw_next_command_us(void);
/* Aging samples due up to target (inclusive), for a caller that budgets work. */
uint64_t fw_aging_due(uint64_t target_us);
/* Earliest pending sweep/command event time (UINT64_MAX when none). */
uint64_t fw_next_event_us(void);
/* The payload of a status message as get_status would answer now (for tests); its length. */
size_t fw_status_payload(uint8_t *buf, size_t cap);
/* A stream's ring: out[0] head, out[1] oldest, out[2] acked, out[3] records overwritten
 * before being acknowledged, out[4] overflow flag (64-bit seqs). */
void fw_ring_info(uint8_t stream, int64_t *out);
/* The packed record of seq (AGING or SWEEP stream); 0, or -1 when it is no longer held. */
int fw_ring_record(uint8_t stream, int64_t seq, uint8_t *out);
/* Make the running fw_advance return after the step in progress (a HAL callback that learnt of
 * something the caller must handle first, e.g. a new predicted driver fault). */
void fw_yield(void);
/* Test knobs of the simulated board: answer the next `busy` hellos with error BUSY; report
 * spec_hash instead of FP_SPEC_HASH when override_hash (a board built from another spec). */
void fw_debug_hello(uint32_t busy, int override_hash, uint32_t spec_hash);

#endif /* FW_H */
