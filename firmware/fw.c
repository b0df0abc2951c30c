/* fw.c - the LED test board's firmware core (see fw.h, docs/firmware.md).
 *
 * Portable C99, no heap: every buffer is static and sized at compile time (fw.h). The protocol
 * (framing, CRC, pack/unpack) is the generated firmware_protocol.h; the hardware is hal.h.
 * Behaviour contract: sim/board.py (the Python board), message for message. */
#include "fw.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "fw_names.h"
#include "hal.h"

#define SEQ_MASK 0xFFFFFFFFu
#define NO_SEQ 0xFFFFFFFFu
#define NO_SWEEP_ID 0xFFFFu
#define NONE_CHANNEL 0xFFFFu
#define AUTO_RANGE 0xFFu
/* records per stream frame: the array lengths of the generated messages */
#define AGING_PER_FRAME ((uint16_t)(sizeof ((fp_aging_samples_t *)0)->records / sizeof(fp_aging_sample_t)))
#define SWEEP_PER_FRAME ((uint16_t)(sizeof ((fp_sweep_points_t *)0)->records / sizeof(fp_sweep_point_t)))
#define SPEC_PAYLOAD_MAX (4 + 8 + 2 + 2 + 2 + 1 + 4 * 4 + 2 + 2 * FW_SPECTRUM_PIXELS)
#define REPLY_MAX 320
#define MAX_SWEEP_POINTS 2000
#define MIN_AGING_INTERVAL_MS 10u
#define MAX_AGING_INTERVAL_MS 86400000u
#define MAX_DWELL_MS 60000.0f
#define MAX_SPECTRUM_INTEGRATION_MS 60000.0f
#define MAX_PD_READS 1000u

/* ---- sequence rings (64-bit seqs inside, u32 on the wire; sim/hardware.py _SeqRing) ---------- */
typedef struct {
    int64_t base, head, acked, lost_to, overwritten_unacked;
    uint32_t depth;
    uint8_t overflow;
} ring_t;

static int64_t ring_oldest(const ring_t *r) {
    int64_t o = r->head - (int64_t)r->depth;
    return o > r->base ? o : r->base;
}
static int64_t ring_unwrap(const ring_t *r, uint32_t seq32) {
    int64_t delta = (int64_t)((seq32 - (uint32_t)r->head) & SEQ_MASK);
    if (delta > ((int64_t)1 << 31)) delta -= (int64_t)1 << 32;
    return r->head + delta;
}
static void ring_init(ring_t *r, uint32_t depth, int64_t first) {
    r->depth = depth; r->base = r->head = first; r->acked = r->lost_to = first - 1; r->overflow = 0; r->overwritten_unacked = 0;
}
static void ring_advance(ring_t *r, int64_t n) {
    int64_t new_head = r->head + n;
    int64_t new_oldest = new_head - (int64_t)r->depth, lo = ring_oldest(r);
    if (new_oldest < r->base) new_oldest = r->base;
    if (r->acked + 1 > lo) lo = r->acked + 1;
    if (new_oldest > lo) { r->overwritten_unacked += new_oldest - lo; r->lost_to = new_oldest - 1; r->overflow = 1; }
    r->head = new_head;
}
static void ring_ack(ring_t *r, uint32_t seq32) {
    int64_t s = ring_unwrap(r, seq32);
    if (s > r->head - 1) s = r->head - 1;
    if (s > r->acked) r->acked = s;
    if (r->overflow && r->acked >= r->lost_to) r->overflow = 0;
}
static void ring_replay_range(const ring_t *r, uint32_t from32, uint32_t to32, int64_t *first, int64_t *last) {
    int64_t f = ring_unwrap(r, from32), l;
    if (to32 == SEQ_MASK) l = r->head - 1;
    else { l = ring_unwrap(r, to32); if (l > r->head - 1) l = r->head - 1; }
    if (f < ring_oldest(r)) f = ring_oldest(r);
    *first = f; *last = l;
}

/* ---- state ------------------------------------------------------------------------------------ */
typedef struct {
    uint8_t active, gain;
    uint16_t pixel;
    float current_a, compliance_v;
    uint64_t interval_us, next_t;
} channel_t;

typedef struct {
    uint8_t active;
    uint16_t sweep_id;
    uint16_t pixel;
    uint8_t options, gain, autorange, stop_on_compliance;
    uint8_t is_list;
    double start, step, stop;
    float list[200];
    uint16_t n_fwd, n, k;
    uint16_t spec_idx[16];
    uint8_t n_spec;
    float compliance_a, integration_ms, spec_integration_ms, breakdown;
    uint32_t point_us, spec_us;
    uint64_t next_t;
    uint8_t has_pending;
    uint64_t pending_t;
    uint16_t pending_k;
    uint16_t n_emitted;
    int64_t last_seq;
    float meas_v, meas_i;
} sweep_t;

typedef struct {
    uint16_t seq;
    uint8_t flags, msg_id;
    uint16_t len;
    uint8_t payload[FP_MAX_PAYLOAD];
} request_t;

typedef struct {
    uint16_t seq, len;
    uint32_t stamp;
    uint8_t used;
    uint8_t data[REPLY_MAX];
} cache_entry_t;

static fw_config_t cfg;
static fp_capabilities_t caps;
static fw_counters_t counters;

/* retained across a reset (unless reboot_loses_ring) */
static ring_t r_aging, r_sweep, r_spec;
static uint8_t aging_buf[FW_AGING_RING_MAX][FP_AGING_SAMPLE_SIZE];
static uint8_t sweep_buf[FW_SWEEP_RING_MAX][FP_SWEEP_POINT_SIZE];
static uint8_t spec_buf[FW_SPECTRUM_RING_MAX][SPEC_PAYLOAD_MAX];
static uint16_t spec_len[FW_SPECTRUM_RING_MAX];
static uint64_t clock_base_us;
static uint8_t boot_notice; /* a sweep cut by a reset: sweep_done REBOOT after the next hello_reply */
static fp_sweep_done_t boot_notice_msg;

/* volatile */
static uint64_t now_us;
static uint32_t boot_id;
static uint8_t link_up;
static hal_smu_state_t smu;
static uint8_t pd_gain[FW_MAX_PIXELS + 1], pd_auto[FW_MAX_PIXELS + 1];
static channel_t channels[FW_MAX_CHANNELS];
static sweep_t sw;
static uint8_t interlock_open;
static uint32_t latched_faults;
static uint32_t wd_timeout_ms;
static uint8_t wd_policy, wd_fired;
static uint64_t last_heard_ms;
static request_t queue[FW_QUEUE_DEPTH];
static uint8_t q_head, q_count;
static uint8_t has_running;
static uint64_t running_done, busy_until;
static cache_entry_t cache[FW_REPLY_CACHE];
static uint32_t cache_stamp;
static uint8_t yield_flag;
static uint32_t hello_busy;
static uint8_t hello_hash_override;
static uint32_t hello_hash;

/* rx framing */
static uint8_t rx_buf[FP_MAX_ENCODED];
static size_t rx_len;
static uint8_t rx_overrun;

/* scratch */
static uint8_t tx_frame[FP_MAX_ENCODED];
static uint8_t payload_buf[FP_MAX_PAYLOAD];
/* the request being parsed or executed, and other scratch (a spectrum being built) */
static fp_message_t req_msg;
/* the reply being built: only the messages a request is answered with */
typedef union {
    fp_ok_t ok;
    fp_error_t error;
    fp_hello_reply_t hello_reply;
    fp_capabilities_t capabilities;
    fp_pong_t pong;
    fp_status_t status;
    fp_smu_reading_t smu_reading;
    fp_pd_reading_t pd_reading;
} fw_reply_t;
static fw_reply_t out_msg;

/* the stream block being filled (records sent as produced, several to a frame) */
static uint8_t blk_stream; /* 0 none, 1 aging, 2 sweep */
static uint16_t blk_n;
/* the block is built in payload_buf: whatever packs another payload flushes the block first */
#define blk_payload payload_buf

/* the error of the request being executed */
static uint8_t err_code;
static char err_detail[97];

/* ---- output ------------------------------------------------------------------------------------ */
static size_t encode(uint8_t id, uint8_t flags, uint16_t seq, const uint8_t *p, size_t n) {
    return fp_frame_encode(id, flags, seq, p, n, tx_frame, sizeof tx_frame);
}

static void write_frame(size_t k, int stream) {
    if (!link_up || k == 0) return;
    hal_uart_write(tx_frame, k, stream);
    counters.frames_built++;
}

static void flush_block(void) {
    uint8_t id;
    size_t k, rs;
    if (blk_n == 0) { blk_stream = 0; return; }
    id = blk_stream == 1 ? FP_MSG_AGING_SAMPLES : FP_MSG_SWEEP_POINTS;
    rs = blk_stream == 1 ? FP_AGING_SAMPLE_SIZE : FP_SWEEP_POINT_SIZE;
    fp_put_u16(blk_payload, blk_n);
    k = encode(id, FP_FRAME_FLAGS_STREAM, 0, blk_payload, 2 + blk_n * rs);
    write_frame(k, 1);
    blk_n = 0;
    blk_stream = 0;
}

static void block_add(uint8_t stream, const uint8_t *rec) {
    size_t rs = stream == 1 ? FP_AGING_SAMPLE_SIZE : FP_SWEEP_POINT_SIZE;
    uint16_t max = stream == 1 ? AGING_PER_FRAME : SWEEP_PER_FRAME;
    if (!link_up) return;
    if (blk_stream != stream) flush_block();
    blk_stream = stream;
    memcpy(blk_payload + 2 + blk_n * rs, rec, rs);
    if (++blk_n == max) flush_block();
}

/* an unsolicited frame (seq 0) whose payload the caller packed into payload_buf (after
 * flush_block: the block is built in the same buffer); n is the packer's result */
static void emit_packed(uint8_t id, size_t n, int stream) {
    if (!link_up || n == FP_PACK_ERROR) return;
    write_frame(encode(id, FP_FRAME_FLAGS_STREAM, 0, payload_buf, n), stream);
}
#define EMIT(id, pack, msg, stream) \
    do { flush_block(); emit_packed((id), pack((msg), payload_buf, sizeof payload_buf), (stream)); } while (0)

static void emit_payload(uint8_t id, const uint8_t *p, size_t n, int stream) {
    flush_block();
    if (!link_up) return;
    write_frame(encode(id, FP_FRAME_FLAGS_STREAM, 0, p, n), stream);
}

static void copy_str(char *dst, const char *src, size_t max) {
    size_t n = strlen(src);
    if (n > max) n = max;
    memcpy(dst, src, n);
    dst[n] = 0;
}

static const cache_entry_t *cache_find(uint16_t seq) {
    int i;
    for (i = 0; i < FW_REPLY_CACHE; i++)
        if (cache[i].used && cache[i].seq == seq) return &cache[i];
    return NULL;
}

/* the reply built in out_msg, packed into payload_buf */
static size_t pack_reply(uint8_t id) {
    uint8_t *b = payload_buf;
    size_t cap = sizeof payload_buf;
    switch (id) {
    case FP_MSG_OK: return fp_ok_pack(&out_msg.ok, b, cap);
    case FP_MSG_ERROR: return fp_error_pack(&out_msg.error, b, cap);
    case FP_MSG_HELLO_REPLY: return fp_hello_reply_pack(&out_msg.hello_reply, b, cap);
    case FP_MSG_CAPABILITIES: return fp_capabilities_pack(&out_msg.capabilities, b, cap);
    case FP_MSG_PONG: return fp_pong_pack(&out_msg.pong, b, cap);
    case FP_MSG_STATUS: return fp_status_pack(&out_msg.status, b, cap);
    case FP_MSG_SMU_READING: return fp_smu_reading_pack(&out_msg.smu_reading, b, cap);
    case FP_MSG_PD_READING: return fp_pd_reading_pack(&out_msg.pd_reading, b, cap);
    default: return FP_PACK_ERROR;
    }
}

/* answer request seq with the reply in out_msg (message id), and cache it for a retry */
static void respond(uint16_t seq, uint8_t id) {
    size_t n, k;
    flush_block();
    n = pack_reply(id);
    if (n == FP_PACK_ERROR) return;
    k = encode(id, FP_FRAME_FLAGS_RESPONSE, seq, payload_buf, n);
    if (seq && k > 0 && k <= REPLY_MAX) {
        int i, slot = -1;
        for (i = 0; i < FW_REPLY_CACHE && slot < 0; i++)
            if (cache[i].used && cache[i].seq == seq) slot = i;
        for (i = 0; i < FW_REPLY_CACHE && slot < 0; i++)
            if (!cache[i].used) slot = i;
        if (slot < 0) {
            slot = 0;
            for (i = 1; i < FW_REPLY_CACHE; i++)
                if (cache[i].stamp < cache[slot].stamp) slot = i;
        }
        cache[slot].used = 1; cache[slot].seq = seq; cache[slot].len = (uint16_t)k;
        cache[slot].stamp = ++cache_stamp;
        memcpy(cache[slot].data, tx_frame, k);
    }
    write_frame(k, 0);
}

static void respond_error(uint16_t seq, uint8_t code, uint8_t ref, const char *detail) {
    memset(&out_msg, 0, sizeof out_msg);
    out_msg.error.code = code;
    out_msg.error.ref_msg_id = ref;
    copy_str(out_msg.error.detail, detail, 96);
    counters.errors++;
    counters.errors_by_code[code & 15]++;
    respond(seq, FP_MSG_ERROR);
}

static void event(uint8_t code, uint16_t ch, uint16_t pixel, float value, const char *detail) {
    fp_event_t m;
    memset(&m, 0, sizeof m);
    m.code = code; m.channel = ch; m.pixel = pixel;
    m.t_us = fw_clock_us(); m.value = value;
    copy_str(m.detail, detail, 64);
    counters.events++;
    counters.events_by_code[code & 15]++;
    EMIT(FP_MSG_EVENT, fp_event_pack, &m, 0);
}

/* ---- errors ------------------------------------------------------------------------------------- */
#define FAIL 1
static int fail(uint8_t code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_detail, sizeof err_detail, fmt, ap);
    va_end(ap);
    err_code = code;
    return FAIL;
}
static int finite_arg(const char *name, float v) {
    if (!isfinite(v)) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "%s is %s: must be a finite number", name,
                                  isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"));
    return 0;
}
static uint16_t n_pixels(void) { return (uint16_t)(cfg.n_substrates * cfg.pixels_per_substrate); }
static int pixel_arg(uint16_t pixel, int allow_none) {
    if (pixel < (allow_none ? 0 : 1) || pixel > n_pixels())
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "pixel %u unknown: board has pixels 1..%u%s", pixel,
                    n_pixels(), allow_none ? " (0 = none)" : "");
    return 0;
}
static int channel_arg(uint16_t ch) {
    if (ch >= cfg.n_channels)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "channel %u unknown: board has channels 0..%u", ch,
                    cfg.n_channels - 1);
    return 0;
}
static int gain_arg(const char *name, uint8_t gain) {
    if (gain >= caps.pd_gains_v_per_a_count)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "%s %u out of range 0..%u", name, gain,
                    caps.pd_gains_v_per_a_count - 1);
    return 0;
}
static int range_arg(const char *name, float v, float lo, float hi, int lo_open) {
    if (finite_arg(name, v)) return FAIL;
    if ((lo_open ? v <= lo : v < lo) || v > hi)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "%s %g out of range %s%g, %g]", name, (double)v,
                    lo_open ? "(" : "[", (double)lo, (double)hi);
    return 0;
}
static int not_sweeping(const char *what) {
    if (sw.active)
        return fail(FP_ERROR_CODE_BUSY, "%s: sweep %u is running (sweep_abort first)", what, sw.sweep_id);
    return 0;
}
static int interlock_closed(const char *what) {
    if (interlock_open)
        return fail(FP_ERROR_CODE_INTERLOCK, "%s: interlock is open; outputs are disabled", what);
    return 0;
}
static int channel_of_pixel(uint16_t pixel) {
    int i;
    for (i = 0; i < cfg.n_channels; i++)
        if (channels[i].active && channels[i].pixel == pixel) return i;
    return -1;
}

/* ---- streams ----------------------------------------------------------------------------------- */
static void push_aging(fp_aging_sample_t *rec) {
    uint8_t *slot;
    rec->seq = (uint32_t)r_aging.head;
    slot = aging_buf[(uint64_t)r_aging.head % r_aging.depth];
    fp_aging_sample_put(slot, rec);
    ring_advance(&r_aging, 1);
    counters.produced[0]++;
    block_add(1, slot);
}

static void aging_sample(uint16_t ch, uint64_t t, uint8_t extra_flags) {
    fp_aging_sample_t rec;
    channel_t *c = &channels[ch];
    memset(&rec, 0, sizeof rec);
    rec.t_us = t - clock_base_us;
    rec.channel = ch;
    rec.pixel = c->pixel;
    hal_aging_sample(ch, t, &c->gain, &rec);
    rec.flags |= extra_flags;
    push_aging(&rec);
}

static void run_aging(uint64_t t_end, int inclusive) {
    uint64_t last;
    if (!inclusive) { if (t_end == 0) return; last = t_end - 1; }
    else last = t_end;
    for (;;) {
        int i, best = -1;
        for (i = 0; i < cfg.n_channels; i++)
            if (channels[i].active && channels[i].next_t <= last
                && (best < 0 || channels[i].next_t < channels[best].next_t))
                best = i;
        if (best < 0) break;
        aging_sample((uint16_t)best, channels[best].next_t, 0);
        channels[best].next_t += channels[best].interval_us;
    }
}

static void stop_channel(uint16_t ch, uint8_t cause) {
    static const uint8_t extra[] = {0, FP_SAMPLE_FLAGS_SHORT, FP_SAMPLE_FLAGS_OPEN, FP_SAMPLE_FLAGS_COMPLIANCE, 0, 0};
    char d[65];
    channel_t *c = &channels[ch];
    uint16_t px = c->pixel;
    uint64_t seq_before = (uint64_t)r_aging.head;
    fp_aging_sample_t last;
    if (!c->active) return;
    aging_sample(ch, now_us, (uint8_t)(FP_SAMPLE_FLAGS_STOPPED | extra[cause]));
    fp_aging_sample_get(aging_buf[seq_before % r_aging.depth], &last);
    hal_aging_off(ch);
    c->active = 0;
    switch (cause) {
    case FW_STOP_SHORT:
        snprintf(d, sizeof d, "pixel %u shorted; channel %u stopped", px, ch);
        event(FP_EVENT_CODE_PIXEL_SHORT, ch, px, last.voltage_v, d);
        break;
    case FW_STOP_OPEN:
        snprintf(d, sizeof d, "pixel %u open; channel %u stopped", px, ch);
        event(FP_EVENT_CODE_PIXEL_OPEN, ch, px, c->compliance_v, d);
        break;
    case FW_STOP_COMPLIANCE:
        snprintf(d, sizeof d, "pixel %u reached %g V; channel %u stopped", px, (double)c->compliance_v, ch);
        event(FP_EVENT_CODE_COMPLIANCE, ch, px, c->compliance_v, d);
        break;
    case FW_STOP_INTERLOCK:
        event(FP_EVENT_CODE_CHANNEL_STOPPED, ch, px, 0.0f, "interlock");
        break;
    case FW_STOP_WATCHDOG:
        event(FP_EVENT_CODE_CHANNEL_STOPPED, ch, px, 0.0f, "watchdog");
        break;
    default:
        break;
    }
}

static void push_spectrum(fp_spectrum_t *m) {
    size_t n;
    uint32_t slot;
    m->seq = (uint32_t)r_spec.head;
    m->t_us = fw_clock_us();
    slot = (uint32_t)((uint64_t)r_spec.head % r_spec.depth);
    n = fp_spectrum_pack(m, spec_buf[slot], SPEC_PAYLOAD_MAX);
    spec_len[slot] = n == FP_PACK_ERROR ? 0 : (uint16_t)n;
    ring_advance(&r_spec, 1);
    counters.produced[2]++;
}

/* ---- SMU and sweep -------------------------------------------------------------------------- */
static float sweep_fwd_v(uint16_t i) {
    if (sw.is_list) return sw.list[i];
    if (i == sw.n_fwd - 1) return (float)sw.stop;
    return (float)(sw.start + sw.step * (double)i);
}
static float sweep_v(uint16_t k) { return k < sw.n_fwd ? sweep_fwd_v(k) : sweep_fwd_v((uint16_t)(sw.n - 1 - k)); }

static void sweep_end(uint8_t reason) {
    fp_sweep_done_t m;
    if (!sw.active) return;
    sw.active = 0;
    flush_block();
    smu.output_on = 0;
    smu.pixel = 0;
    hal_smu_apply(&smu);
    memset(&m, 0, sizeof m);
    m.sweep_id = sw.sweep_id;
    m.n_points = sw.n_emitted;
    m.reason = reason;
    m.last_seq = sw.last_seq < 0 ? NO_SEQ : (uint32_t)sw.last_seq;
    EMIT(FP_MSG_SWEEP_DONE, fp_sweep_done_pack, &m, 0);
}

static void smu_off(uint8_t sweep_reason) {
    if (sw.active) sweep_end(sweep_reason);
    smu.output_on = 0;
    smu.pixel = 0;
    hal_smu_apply(&smu);
}

static void outputs_off(uint8_t cause) {
    int i;
    smu_off(cause == FW_STOP_INTERLOCK ? FP_SWEEP_END_INTERLOCK : FP_SWEEP_END_ABORTED);
    for (i = 0; i < cfg.n_channels; i++)
        if (channels[i].active) stop_channel((uint16_t)i, cause);
}

static uint64_t sweep_next_t(void) {
    if (sw.has_pending) return sw.pending_t;
    return sw.k < sw.n ? sw.next_t : now_us;
}

static int sweep_is_spec(uint16_t k) {
    uint8_t j;
    for (j = 0; j < sw.n_spec; j++)
        if (sw.spec_idx[j] == k) return 1;
    return 0;
}

static void sweep_spectrum(uint16_t k) {
    fp_spectrum_t *m = &req_msg.spectrum;
    memset(m, 0, sizeof *m);
    m->sweep_id = sw.sweep_id; m->index = k; m->pixel = sw.pixel;
    m->voltage_v = sw.meas_v; m->current_a = sw.meas_i; m->integration_ms = sw.spec_integration_ms;
    if (hal_spectrum(sw.pixel, sw.spec_integration_ms, m->counts, caps.spectrometer_pixels, &m->dark_counts,
                     &m->flags, NULL, NULL) != 0)
        return;
    m->counts_count = caps.spectrometer_pixels;
    push_spectrum(m);
    EMIT(FP_MSG_SPECTRUM, fp_spectrum_pack, m, 1);
}

static void sweep_step(void) {
    fp_sweep_point_t rec;
    uint8_t slot[FP_SWEEP_POINT_SIZE];
    uint16_t k;
    float v;
    if (sw.has_pending) {
        if (sw.pending_t <= now_us) {
            sw.has_pending = 0;
            sweep_spectrum(sw.pending_k);
            sw.next_t = now_us + sw.point_us;
            if (sw.k < sw.n) { smu.level = sweep_v(sw.k); hal_smu_apply(&smu); }
            if (sw.k >= sw.n) sweep_end(FP_SWEEP_END_COMPLETED);
        }
        return;
    }
    if (sw.k >= sw.n) { sweep_end(FP_SWEEP_END_COMPLETED); return; }
    k = sw.k;
    v = sweep_v(k);
    memset(&rec, 0, sizeof rec);
    rec.pd_gain = sw.gain;
    hal_sweep_point(sw.pixel, v, sw.compliance_a, sw.integration_ms, sw.autorange, sw.point_us, &rec);
    sw.gain = rec.pd_gain;
    rec.t_us = now_us - clock_base_us;
    rec.sweep_id = sw.sweep_id;
    rec.index = k;
    rec.pixel = sw.pixel;
    rec.voltage_set_v = v;
    if (k >= sw.n_fwd) rec.flags |= FP_SAMPLE_FLAGS_REVERSE;
    rec.seq = (uint32_t)r_sweep.head;
    fp_sweep_point_put(slot, &rec);
    memcpy(sweep_buf[(uint64_t)r_sweep.head % r_sweep.depth], slot, sizeof slot);
    sw.last_seq = r_sweep.head;
    ring_advance(&r_sweep, 1);
    counters.produced[1]++;
    sw.n_emitted++;
    sw.meas_v = rec.voltage_v;
    sw.meas_i = rec.current_a;
    sw.k++;
    /* the source goes to the next point's voltage now, to settle during its dwell; it stays at
     * this point's while a spectrum of this point is taken */
    smu.level = (sw.k < sw.n && !(k < sw.n_fwd && sweep_is_spec(k))) ? sweep_v(sw.k) : v;
    hal_smu_apply(&smu);
    sw.next_t = now_us + sw.point_us;
    block_add(2, slot);
    if (sw.breakdown > 0 && fabsf(v) - fabsf(rec.voltage_v) > sw.breakdown) { sweep_end(FP_SWEEP_END_BREAKDOWN); return; }
    if ((rec.flags & FP_SAMPLE_FLAGS_COMPLIANCE) && sw.stop_on_compliance) { sweep_end(FP_SWEEP_END_COMPLIANCE); return; }
    if (k < sw.n_fwd && sweep_is_spec(k)) {
        sw.has_pending = 1; sw.pending_t = now_us + sw.spec_us; sw.pending_k = k;
        return;
    }
    if (sw.k >= sw.n) sweep_end(FP_SWEEP_END_COMPLETED);
}

/* ---- handlers ------------------------------------------------------------------------------------ */
enum { R_REPLY = 0, R_FAIL = FAIL, R_DEFERRED, R_NONE };
enum { POST_NONE, POST_BOOT_NOTICE, POST_SPECTRUM, POST_REPLAY };
static uint8_t reply_id;
static uint8_t post;
static uint8_t post_stream;
static int64_t post_first, post_last;
static uint64_t defer_cost;

static void status_msg(fp_status_t *s) {
    int i;
    memset(s, 0, sizeof *s);
    s->t_us = fw_clock_us();
    s->boot_id = boot_id;
    s->faults = latched_faults | (interlock_open ? FP_FAULT_INTERLOCK_OPEN : 0)
        | ((r_aging.overflow || r_sweep.overflow || r_spec.overflow) ? FP_FAULT_RING_OVERFLOW : 0);
    s->interlock_closed = interlock_open ? 0 : 1;
    s->smu_output_on = smu.output_on;
    s->sweep_active = sw.active;
    for (i = 0; i < cfg.n_channels; i++) {
        if (!channels[i].active) continue;
        if (i < 32) s->aging_active_mask |= (uint32_t)1 << i;
        if (cfg.n_channels > 32) s->aging_active[i / 8] |= (uint8_t)(1u << (i % 8));
    }
    if (cfg.n_channels > 32) s->aging_active_count = (uint16_t)((cfg.n_channels + 7) / 8);
    s->temperatures_c_count = hal_temperatures(s->temperatures_c, 8);
    s->aging_head_seq = (uint32_t)r_aging.head;
    s->sweep_head_seq = (uint32_t)r_sweep.head;
    s->spectrum_head_seq = (uint32_t)r_spec.head;
    s->aging_oldest_seq = (uint32_t)ring_oldest(&r_aging);
}

static int h_hello(void) {
    if (hello_busy > 0) { hello_busy--; return fail(FP_ERROR_CODE_BUSY, "board is held by another host"); }
    memset(&out_msg, 0, sizeof out_msg);
    out_msg.hello_reply.protocol_version = FP_PROTOCOL_VERSION;
    out_msg.hello_reply.spec_hash = hello_hash_override ? hello_hash : FP_SPEC_HASH;
    out_msg.hello_reply.boot_id = boot_id;
    strcpy(out_msg.hello_reply.firmware_version, cfg.firmware_version);
    strcpy(out_msg.hello_reply.serial_number, cfg.serial_number);
    reply_id = FP_MSG_HELLO_REPLY;
    if (boot_notice) { boot_notice = 0; post = POST_BOOT_NOTICE; }
    return R_REPLY;
}

static int h_watchdog(const fp_set_watchdog_t *m) {
    if (m->policy > FP_WATCHDOG_POLICY_GO_SAFE)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "policy %u unknown (0 KEEP_AGING, 1 GO_SAFE)", m->policy);
    wd_timeout_ms = m->timeout_ms;
    wd_policy = m->policy;
    last_heard_ms = hal_millis();
    wd_fired = 0;
    latched_faults &= ~(uint32_t)FP_FAULT_WATCHDOG_EXPIRED;
    return R_REPLY;
}

static int h_mux(const fp_mux_select_t *m) {
    int ch;
    if (not_sweeping("mux_select") || pixel_arg(m->pixel, 1)) return FAIL;
    if (m->pixel && (ch = channel_of_pixel(m->pixel)) >= 0)
        return fail(FP_ERROR_CODE_BUSY, "pixel %u is driven by aging channel %d", m->pixel, ch);
    smu.pixel = m->pixel;
    hal_smu_apply(&smu);
    return R_REPLY;
}

static int h_smu_configure(const fp_smu_configure_t *m) {
    uint16_t nr;
    if (not_sweeping("smu_configure")) return FAIL;
    if (m->mode > FP_SMU_MODE_SOURCE_I)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "mode %u unknown (0 SOURCE_V, 1 SOURCE_I)", m->mode);
    nr = m->mode == FP_SMU_MODE_SOURCE_V ? caps.smu_current_ranges_a_count : caps.smu_voltage_ranges_v_count;
    if (m->range_index != AUTO_RANGE && m->range_index >= nr)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "range_index %u out of range 0..%u or 255 (auto)", m->range_index, nr - 1);
    if (finite_arg("compliance", m->compliance)) return FAIL;
    if (m->compliance <= 0) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "compliance %g must be > 0", (double)m->compliance);
    if (m->mode == FP_SMU_MODE_SOURCE_V && m->compliance > caps.max_current_a)
        return fail(FP_ERROR_CODE_LIMIT, "compliance %g A beyond max_current_a %g A", (double)m->compliance, (double)caps.max_current_a);
    if (m->mode == FP_SMU_MODE_SOURCE_I && m->compliance > caps.max_voltage_v)
        return fail(FP_ERROR_CODE_LIMIT, "compliance %g V beyond max_voltage_v %g V", (double)m->compliance, (double)caps.max_voltage_v);
    if (range_arg("integration_ms", m->integration_ms, 0.0f, caps.max_integration_ms, 1)) return FAIL;
    if (m->mode != smu.mode) smu.output_on = 0;
    smu.mode = m->mode;
    smu.range_index = m->range_index;
    smu.compliance = m->compliance;
    smu.integration_ms = m->integration_ms;
    hal_smu_apply(&smu);
    return R_REPLY;
}

static int h_smu_output(const fp_smu_output_t *m) {
    int ch;
    if (not_sweeping("smu_output") || finite_arg("level", m->level)) return FAIL;
    if (smu.mode == FP_SMU_MODE_SOURCE_V && fabsf(m->level) > caps.max_voltage_v)
        return fail(FP_ERROR_CODE_LIMIT, "level %g V beyond max_voltage_v %g V", (double)m->level, (double)caps.max_voltage_v);
    if (smu.mode == FP_SMU_MODE_SOURCE_I && fabsf(m->level) > caps.max_current_a)
        return fail(FP_ERROR_CODE_LIMIT, "level %g A beyond max_current_a %g A", (double)m->level, (double)caps.max_current_a);
    if (m->enable) {
        if (interlock_closed("smu_output")) return FAIL;
        if (smu.pixel && (ch = channel_of_pixel(smu.pixel)) >= 0)
            return fail(FP_ERROR_CODE_BUSY, "pixel %u is driven by aging channel %d", smu.pixel, ch);
    }
    smu.output_on = m->enable ? 1 : 0;
    smu.level = m->level;
    hal_smu_apply(&smu);
    return R_REPLY;
}

static int h_pd_configure(const fp_pd_configure_t *m) {
    uint16_t p;
    if (pixel_arg(m->pixel, 1) || gain_arg("gain_index", m->gain_index)) return FAIL;
    for (p = 0; p <= n_pixels(); p++)
        if (m->pixel == 0 || p == m->pixel) { pd_gain[p] = m->gain_index; pd_auto[p] = m->autorange ? 1 : 0; }
    return R_REPLY;
}

static int h_pd_read(const fp_pd_read_t *m) {
    if (pixel_arg(m->pixel, 0)) return FAIL;
    if (m->n < 1 || m->n > MAX_PD_READS) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "n %u out of range 1..%u", m->n, MAX_PD_READS);
    if (range_arg("integration_ms", m->integration_ms, 0.0f, caps.max_integration_ms, 1)) return FAIL;
    defer_cost = (uint64_t)((double)m->n * (double)m->integration_ms * 1000.0 + 0.5);
    return R_DEFERRED;
}

static int h_spectrum(const fp_spectrum_acquire_t *m) {
    if (not_sweeping("spectrum_acquire") || pixel_arg(m->pixel, 0)) return FAIL;
    if (range_arg("integration_ms", m->integration_ms, 0.0f, MAX_SPECTRUM_INTEGRATION_MS, 1)) return FAIL;
    defer_cost = (uint64_t)((double)m->integration_ms * 1000.0 + 0.5);
    return R_DEFERRED;
}

static int h_sweep_start(const fp_sweep_start_t *m) {
    uint16_t i;
    float vmax = 0;
    int ch;
    if (sw.active) return fail(FP_ERROR_CODE_BUSY, "sweep %u is already running", sw.sweep_id);
    if (pixel_arg(m->pixel, 0)) return FAIL;
    memset(&sw, 0, sizeof sw);
    if (m->voltages_v_count) {
        for (i = 0; i < m->voltages_v_count; i++)
            if (!isfinite(m->voltages_v[i])) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "voltages_v contains NaN or inf");
        sw.is_list = 1;
        memcpy(sw.list, m->voltages_v, sizeof(float) * m->voltages_v_count);
        sw.n_fwd = m->voltages_v_count;
    } else {
        double start = m->start_v, stop = m->stop_v, step = m->step_v, nsteps;
        if (finite_arg("start_v", m->start_v) || finite_arg("stop_v", m->stop_v) || finite_arg("step_v", m->step_v)) return FAIL;
        if (step == 0 && start != stop) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "step_v is 0 (and no voltages_v list)");
        if (step != 0 && (stop - start) * step < 0)
            return fail(FP_ERROR_CODE_BAD_ARGUMENT, "step_v %g goes away from stop_v %g (start_v %g)", step, stop, start);
        sw.start = start; sw.stop = stop; sw.step = step;
        if (start == stop) sw.n_fwd = 1;
        else {
            nsteps = floor((stop - start) / step + 1e-9);
            if (nsteps + 1 > MAX_SWEEP_POINTS)
                return fail(FP_ERROR_CODE_BAD_ARGUMENT, "sweep has %d points > max %d", (int)nsteps + 1, MAX_SWEEP_POINTS);
            sw.n_fwd = (uint16_t)(nsteps + 1);
            if (fabs(start + step * nsteps - stop) > 1e-6 * fabs(step)) sw.n_fwd++;
        }
    }
    sw.n = (uint16_t)(m->options & 0x01 ? 2 * sw.n_fwd : sw.n_fwd);
    for (i = 0; i < sw.n_fwd; i++) if (fabsf(sweep_fwd_v(i)) > vmax) vmax = fabsf(sweep_fwd_v(i));
    if (vmax > caps.max_voltage_v)
        return fail(FP_ERROR_CODE_LIMIT, "sweep reaches %g V beyond max_voltage_v %g V", (double)vmax, (double)caps.max_voltage_v);
    if (finite_arg("compliance_a", m->compliance_a)) return FAIL;
    if (m->compliance_a <= 0) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "compliance_a %g must be > 0", (double)m->compliance_a);
    if (m->compliance_a > caps.max_current_a)
        return fail(FP_ERROR_CODE_LIMIT, "compliance_a %g A beyond max_current_a %g A", (double)m->compliance_a, (double)caps.max_current_a);
    if (range_arg("dwell_ms", m->dwell_ms, 0.0f, MAX_DWELL_MS, 0)) return FAIL;
    if (range_arg("integration_ms", m->integration_ms, 0.0f, caps.max_integration_ms, 1)) return FAIL;
    if (m->options & ~0x07) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "options 0x%02X: bits 3-7 are reserved", m->options);
    if (gain_arg("pd_gain", m->pd_gain)) return FAIL;
    if (m->spectrum_at_v_count) {
        for (i = 0; i < m->spectrum_at_v_count; i++)
            if (!isfinite(m->spectrum_at_v[i])) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "spectrum_at_v contains NaN or inf");
        if (range_arg("spectrum_integration_ms", m->spectrum_integration_ms, 0.0f, MAX_SPECTRUM_INTEGRATION_MS, 1)) return FAIL;
    }
    if (finite_arg("breakdown_v_drop", m->breakdown_v_drop)) return FAIL;
    if (m->breakdown_v_drop < 0) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "breakdown_v_drop %g must be >= 0", (double)m->breakdown_v_drop);
    if (interlock_closed("sweep_start")) return FAIL;
    if ((ch = channel_of_pixel(m->pixel)) >= 0)
        return fail(FP_ERROR_CODE_BUSY, "pixel %u is driven by aging channel %d", m->pixel, ch);
    /* the spectra: the forward point nearest each requested voltage (first on ties) */
    for (i = 0; i < m->spectrum_at_v_count; i++) {
        uint16_t j, best = 0;
        double bd = fabs((double)sweep_fwd_v(0) - m->spectrum_at_v[i]);
        for (j = 1; j < sw.n_fwd; j++) {
            double d = fabs((double)sweep_fwd_v(j) - m->spectrum_at_v[i]);
            if (d < bd) { bd = d; best = j; }
        }
        if (!sweep_is_spec(best)) sw.spec_idx[sw.n_spec++] = best;
    }
    sw.sweep_id = m->sweep_id;
    sw.pixel = m->pixel;
    sw.options = m->options;
    sw.stop_on_compliance = (m->options & 0x02) ? 1 : 0;
    sw.autorange = (m->options & 0x04) ? 1 : 0;
    sw.gain = m->pd_gain;
    sw.compliance_a = m->compliance_a;
    sw.integration_ms = m->integration_ms;
    sw.spec_integration_ms = m->spectrum_integration_ms;
    sw.breakdown = m->breakdown_v_drop;
    sw.point_us = (uint32_t)(((double)m->dwell_ms + (double)m->integration_ms) * 1000.0 + 0.5);
    sw.spec_us = (uint32_t)((double)m->spectrum_integration_ms * 1000.0 + 0.5);
    sw.next_t = now_us + sw.point_us;
    sw.last_seq = -1;
    sw.active = 1;
    smu.pixel = m->pixel;
    smu.output_on = 1;
    smu.mode = FP_SMU_MODE_SOURCE_V;
    smu.level = sweep_fwd_v(0);
    smu.compliance = m->compliance_a;
    hal_smu_apply(&smu);
    memset(&out_msg, 0, sizeof out_msg);
    out_msg.ok.value = (uint32_t)r_sweep.head;
    return R_REPLY;
}

static int h_aging_start(const fp_aging_start_t *m) {
    int other;
    channel_t *c;
    if (channel_arg(m->channel) || pixel_arg(m->pixel, 0)) return FAIL;
    other = channel_of_pixel(m->pixel);
    if (other >= 0 && other != m->channel)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "pixel %u is already on aging channel %d", m->pixel, other);
    if (finite_arg("current_a", m->current_a)) return FAIL;
    if (m->current_a <= 0) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "current_a %g must be > 0", (double)m->current_a);
    if (m->current_a > caps.max_aging_current_a)
        return fail(FP_ERROR_CODE_LIMIT, "current_a %g A beyond max_aging_current_a %g A", (double)m->current_a, (double)caps.max_aging_current_a);
    if (m->interval_ms < MIN_AGING_INTERVAL_MS || m->interval_ms > MAX_AGING_INTERVAL_MS)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "interval_ms %lu out of range %u..%lu", (unsigned long)m->interval_ms,
                    MIN_AGING_INTERVAL_MS, (unsigned long)MAX_AGING_INTERVAL_MS);
    if (finite_arg("compliance_v", m->compliance_v)) return FAIL;
    if (m->compliance_v <= 0) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "compliance_v %g must be > 0", (double)m->compliance_v);
    if (m->compliance_v > caps.aging_compliance_v)
        return fail(FP_ERROR_CODE_LIMIT, "compliance_v %g V beyond aging_compliance_v %g V", (double)m->compliance_v, (double)caps.aging_compliance_v);
    if (gain_arg("pd_gain", m->pd_gain) || interlock_closed("aging_start")) return FAIL;
    c = &channels[m->channel];
    if (c->active)
        return fail(FP_ERROR_CODE_BUSY, "channel %u is running (pixel %u); aging_stop it first", m->channel, c->pixel);
    if ((sw.active && sw.pixel == m->pixel) || (smu.pixel == m->pixel && smu.output_on))
        return fail(FP_ERROR_CODE_BUSY, "pixel %u is driven by the SMU", m->pixel);
    c->pixel = m->pixel;
    c->current_a = m->current_a;
    c->compliance_v = m->compliance_v;
    c->gain = m->pd_gain;
    c->interval_us = (uint64_t)m->interval_ms * 1000u;
    c->next_t = now_us;
    c->active = 1;
    hal_aging_on(m->channel, m->pixel, m->current_a, m->compliance_v);
    memset(&out_msg, 0, sizeof out_msg);
    out_msg.ok.value = (uint32_t)r_aging.head;
    return R_REPLY;
}

static int h_aging_set(const fp_aging_set_t *m) {
    channel_t *c;
    if (channel_arg(m->channel)) return FAIL;
    c = &channels[m->channel];
    if (finite_arg("current_a", m->current_a)) return FAIL;
    if (m->current_a <= 0) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "current_a %g must be > 0", (double)m->current_a);
    if (m->current_a > caps.max_aging_current_a)
        return fail(FP_ERROR_CODE_LIMIT, "current_a %g A beyond max_aging_current_a %g A", (double)m->current_a, (double)caps.max_aging_current_a);
    if (m->interval_ms != 0 && (m->interval_ms < MIN_AGING_INTERVAL_MS || m->interval_ms > MAX_AGING_INTERVAL_MS))
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "interval_ms %lu out of range %u..%lu (0 keeps it)", (unsigned long)m->interval_ms,
                    MIN_AGING_INTERVAL_MS, (unsigned long)MAX_AGING_INTERVAL_MS);
    if (!c->active) return fail(FP_ERROR_CODE_BAD_ARGUMENT, "channel %u is not running", m->channel);
    if (interlock_closed("aging_set")) return FAIL;
    c->current_a = m->current_a;
    if (m->interval_ms) c->interval_us = (uint64_t)m->interval_ms * 1000u;
    c->next_t = now_us + c->interval_us;
    hal_aging_on(m->channel, c->pixel, c->current_a, c->compliance_v);
    return R_REPLY;
}

static int h_stream_replay(const fp_stream_replay_t *m) {
    ring_t *r;
    if (m->stream > FP_STREAM_SPECTRUM)
        return fail(FP_ERROR_CODE_BAD_ARGUMENT, "stream %u unknown (0 AGING, 1 SWEEP, 2 SPECTRUM)", m->stream);
    r = m->stream == FP_STREAM_AGING ? &r_aging : m->stream == FP_STREAM_SWEEP ? &r_sweep : &r_spec;
    ring_replay_range(r, m->from_seq, m->to_seq, &post_first, &post_last);
    memset(&out_msg, 0, sizeof out_msg);
    out_msg.ok.value = (uint32_t)post_first;
    post = POST_REPLAY;
    post_stream = m->stream;
    return R_REPLY;
}

static void do_replay(void) {
    int64_t s;
    if (post_first > post_last) return;
    if (post_stream == FP_STREAM_SPECTRUM) {
        for (s = post_first; s <= post_last; s++) {
            uint32_t slot = (uint32_t)((uint64_t)s % r_spec.depth);
            emit_payload(FP_MSG_SPECTRUM, spec_buf[slot], spec_len[slot], 1);
            counters.replayed[2]++;
        }
        return;
    }
    flush_block();
    for (s = post_first; s <= post_last;) {
        int aging = post_stream == FP_STREAM_AGING;
        size_t rs = aging ? FP_AGING_SAMPLE_SIZE : FP_SWEEP_POINT_SIZE;
        int64_t per = aging ? AGING_PER_FRAME : SWEEP_PER_FRAME, n = post_last - s + 1, i;
        if (n > per) n = per;
        fp_put_u16(payload_buf, (uint16_t)n);
        for (i = 0; i < n; i++) {
            const uint8_t *src = aging ? aging_buf[(uint64_t)(s + i) % r_aging.depth] : sweep_buf[(uint64_t)(s + i) % r_sweep.depth];
            memcpy(payload_buf + 2 + (size_t)i * rs, src, rs);
        }
        if (link_up)
            write_frame(encode(aging ? FP_MSG_AGING_SAMPLES : FP_MSG_SWEEP_POINTS, FP_FRAME_FLAGS_STREAM, 0,
                               payload_buf, 2 + (size_t)n * rs), 1);
        counters.replayed[post_stream] += (uint64_t)n;
        s += n;
    }
}

/* deferred requests finish here, after their cost in board time */
static void finish(const request_t *req) {
    fp_message_t *m = &req_msg;
    fp_unpack(req->msg_id, m, req->payload, req->len);
    memset(&out_msg, 0, sizeof out_msg);
    post = POST_NONE;
    if (req->msg_id == FP_MSG_SMU_MEASURE) {
        fp_smu_reading_t *r = &out_msg.smu_reading;
        uint8_t gain = pd_gain[smu.pixel], flags = 0;
        hal_smu_measure(&smu, &r->voltage_v, &r->current_a, &r->photodiode_a, &gain, pd_auto[smu.pixel], &flags);
        if (smu.pixel) pd_gain[smu.pixel] = gain;
        r->pd_gain = smu.pixel ? gain : 0;
        r->flags = flags;
        r->t_us = fw_clock_us();
        respond(req->seq, FP_MSG_SMU_READING);
    } else if (req->msg_id == FP_MSG_PD_READ) {
        fp_pd_reading_t *r = &out_msg.pd_reading;
        uint16_t px = m->pd_read.pixel;
        uint8_t g = pd_gain[px];
        hal_pd_read(px, m->pd_read.n, m->pd_read.integration_ms, &g, pd_auto[px], &r->mean_a, &r->std_a, &r->flags);
        pd_gain[px] = g;
        r->pixel = px;
        r->gain_index = g;
        respond(req->seq, FP_MSG_PD_READING);
    } else if (req->msg_id == FP_MSG_SPECTRUM_ACQUIRE) {
        uint16_t px = m->spectrum_acquire.pixel;
        float integ = m->spectrum_acquire.integration_ms;
        fp_spectrum_t *s = &req_msg.spectrum; /* the request's fields are read: reuse its space */
        uint32_t slot;
        memset(s, 0, sizeof *s);
        s->sweep_id = NO_SWEEP_ID;
        s->pixel = px;
        s->integration_ms = integ;
        if (hal_spectrum(px, integ, s->counts, caps.spectrometer_pixels, &s->dark_counts, &s->flags,
                         &s->voltage_v, &s->current_a) != 0) {
            respond_error(req->seq, FP_ERROR_CODE_INTERNAL, req->msg_id, "spectrometer failed");
            return;
        }
        s->counts_count = caps.spectrometer_pixels;
        out_msg.ok.value = (uint32_t)r_spec.head;
        slot = (uint32_t)((uint64_t)r_spec.head % r_spec.depth);
        push_spectrum(s);
        respond(req->seq, FP_MSG_OK);
        emit_payload(FP_MSG_SPECTRUM, spec_buf[slot], spec_len[slot], 1);
    }
}

static int execute(const request_t *req) {
    fp_message_t *m = &req_msg;
    reply_id = FP_MSG_OK;
    post = POST_NONE;
    memset(&out_msg, 0, sizeof out_msg);
    fp_unpack(req->msg_id, m, req->payload, req->len);
    switch (req->msg_id) {
    case FP_MSG_HELLO: return h_hello();
    case FP_MSG_GET_CAPABILITIES:
        out_msg.capabilities = caps;
        reply_id = FP_MSG_CAPABILITIES;
        return R_REPLY;
    case FP_MSG_PING:
        out_msg.pong.nonce = m->ping.nonce;
        out_msg.pong.t_us = fw_clock_us();
        reply_id = FP_MSG_PONG;
        return R_REPLY;
    case FP_MSG_GET_STATUS:
        status_msg(&out_msg.status);
        reply_id = FP_MSG_STATUS;
        return R_REPLY;
    case FP_MSG_ALL_OFF: outputs_off(FW_STOP_COMMAND); return R_REPLY;
    case FP_MSG_SET_WATCHDOG: return h_watchdog(&m->set_watchdog);
    case FP_MSG_MUX_SELECT: return h_mux(&m->mux_select);
    case FP_MSG_SMU_CONFIGURE: return h_smu_configure(&m->smu_configure);
    case FP_MSG_SMU_OUTPUT: return h_smu_output(&m->smu_output);
    case FP_MSG_SMU_MEASURE:
        if (not_sweeping("smu_measure")) return FAIL;
        defer_cost = (uint64_t)((double)smu.integration_ms * 1000.0 + 0.5);
        return R_DEFERRED;
    case FP_MSG_PD_CONFIGURE: return h_pd_configure(&m->pd_configure);
    case FP_MSG_PD_READ: return h_pd_read(&m->pd_read);
    case FP_MSG_SPECTRUM_ACQUIRE: return h_spectrum(&m->spectrum_acquire);
    case FP_MSG_SWEEP_START: return h_sweep_start(&m->sweep_start);
    case FP_MSG_SWEEP_ABORT: sweep_end(FP_SWEEP_END_ABORTED); return R_REPLY;
    case FP_MSG_AGING_START: return h_aging_start(&m->aging_start);
    case FP_MSG_AGING_SET: return h_aging_set(&m->aging_set);
    case FP_MSG_AGING_STOP:
        if (channel_arg(m->aging_stop.channel)) return FAIL;
        if (channels[m->aging_stop.channel].active) stop_channel(m->aging_stop.channel, FW_STOP_COMMAND);
        return R_REPLY;
    case FP_MSG_STREAM_ACK:
        if (m->stream_ack.stream <= FP_STREAM_SPECTRUM)
            ring_ack(m->stream_ack.stream == 0 ? &r_aging : m->stream_ack.stream == 1 ? &r_sweep : &r_spec, m->stream_ack.seq);
        return R_NONE;
    case FP_MSG_STREAM_REPLAY: return h_stream_replay(&m->stream_replay);
    default:
        return fail(FP_ERROR_CODE_UNKNOWN_MESSAGE, "%s is not handled by this board", fw_msg_name(req->msg_id));
    }
}

static void send_post(void) {
    if (post == POST_BOOT_NOTICE) {
        EMIT(FP_MSG_SWEEP_DONE, fp_sweep_done_pack, &boot_notice_msg, 0);
    } else if (post == POST_REPLAY) {
        do_replay();
    }
    post = POST_NONE;
}

static void pop_request(void) {
    q_head = (uint8_t)((q_head + 1) % FW_QUEUE_DEPTH);
    q_count--;
}

static void cmd_step(void) {
    request_t *req;
    int rc;
    if (q_count == 0) return;
    req = &queue[q_head];
    if (has_running) { /* a deferred request stays at the head of the queue until it is answered */
        if (running_done > now_us) return;
        has_running = 0;
        busy_until = now_us;
        finish(req);
        pop_request();
        return;
    }
    counters.requests++;
    counters.requests_by_id[req->msg_id & 63]++;
    rc = execute(req);
    if (rc == R_FAIL) {
        respond_error(req->seq, err_code, req->msg_id, err_detail);
        pop_request();
        return;
    }
    counters.executed++;
    counters.executed_by_id[req->msg_id & 63]++;
    if (rc == R_DEFERRED) {
        if (defer_cost == 0) { finish(req); pop_request(); return; }
        has_running = 1;
        running_done = now_us + defer_cost;
        return;
    }
    if (rc != R_NONE) {
        respond(req->seq, reply_id);
        send_post();
    }
    pop_request();
}

/* ---- receive ------------------------------------------------------------------------------------ */
static int in_flight(uint16_t seq) {
    uint8_t i;
    for (i = 0; i < q_count; i++)
        if (queue[(q_head + i) % FW_QUEUE_DEPTH].seq == seq) return 1;
    return 0;
}

static void on_frame(const uint8_t *enc, size_t len) {
    uint8_t *raw = rx_buf; /* COBS decodes in place: the write index trails the read index */
    const uint8_t *payload;
    fp_header_t h;
    const cache_entry_t *c;
    char d[97];
    int rc = fp_frame_decode(enc, len, raw, &h, &payload);
    if (rc == FP_FRAME_OK && fp_unpack(h.msg_id, &req_msg, payload, h.payload_len) != 0) rc = -100;
    if (rc != FP_FRAME_OK) {
        counters.frame_errors_in++;
        if (rc == FP_FRAME_ERR_UNKNOWN_ID) {
            memset(&out_msg, 0, sizeof out_msg);
            out_msg.error.code = FP_ERROR_CODE_UNKNOWN_MESSAGE;
            out_msg.error.ref_msg_id = raw[1];
            snprintf(out_msg.error.detail, sizeof out_msg.error.detail, "unknown message id 0x%02X", raw[1]);
            counters.errors++;
            counters.errors_by_code[FP_ERROR_CODE_UNKNOWN_MESSAGE]++;
            EMIT(FP_MSG_ERROR, fp_error_pack, &out_msg.error, 0);
        }
        return;
    }
    counters.valid_frames_in++;
    last_heard_ms = hal_millis();
    wd_fired = 0;
    if (!fw_is_request(h.msg_id)) {
        if (h.seq) {
            snprintf(d, sizeof d, "%s is not a host-to-board message", fw_msg_name(h.msg_id));
            respond_error(h.seq, FP_ERROR_CODE_UNKNOWN_MESSAGE, h.msg_id, d);
        }
        return;
    }
    if (h.seq && in_flight(h.seq)) { counters.retries_ignored++; return; }
    if ((h.flags & FP_FRAME_FLAGS_RETRY) && (c = cache_find(h.seq)) != NULL) {
        counters.resends++;
        flush_block();
        if (link_up) { hal_uart_write(c->data, c->len, 0); counters.frames_built++; }
        return;
    }
    if (q_count == FW_QUEUE_DEPTH) {
        respond_error(h.seq, FP_ERROR_CODE_BUSY, h.msg_id, "request queue full");
        return;
    }
    {
        request_t *q = &queue[(q_head + q_count) % FW_QUEUE_DEPTH];
        q->seq = h.seq; q->flags = h.flags; q->msg_id = h.msg_id; q->len = h.payload_len;
        memcpy(q->payload, payload, h.payload_len);
        q_count++;
    }
}

void fw_rx(const uint8_t *data, size_t len) {
    size_t i;
    for (i = 0; i < len; i++) {
        uint8_t b = data[i];
        if (b == 0) {
            if (rx_overrun) counters.frame_errors_in++;
            else if (rx_len > 0) on_frame(rx_buf, rx_len);
            rx_len = 0;
            rx_overrun = 0;
        } else if (rx_len < sizeof rx_buf) {
            rx_buf[rx_len++] = b;
        } else {
            rx_overrun = 1;
        }
    }
}

/* ---- time ---------------------------------------------------------------------------------------- */
uint64_t fw_advance(uint64_t target_us, int inclusive) {
    if (target_us < now_us) target_us = now_us;
    yield_flag = 0;
    for (;;) {
        uint64_t best = target_us;
        int kind = 0; /* 0 none, 1 sweep, 2 command */
        uint64_t cand[2];
        int has[2] = {0, 0}, i;
        if (sw.active) { cand[0] = sweep_next_t(); has[0] = 1; }
        if (has_running) { cand[1] = running_done; has[1] = 1; }
        else if (q_count) { cand[1] = busy_until > now_us ? busy_until : now_us; has[1] = 1; }
        for (i = 0; i < 2; i++) {
            uint64_t ti;
            if (!has[i]) continue;
            ti = cand[i] > now_us ? cand[i] : now_us;
            if (!inclusive && ti >= target_us) continue;
            if (ti <= best && (kind == 0 || ti < best)) { best = ti; kind = i + 1; }
        }
        run_aging(best, kind == 0 ? inclusive : 0);
        now_us = best;
        if (kind == 0) break;
        if (kind == 1) sweep_step();
        else cmd_step();
        if (yield_flag) break;
    }
    flush_block();
    return now_us;
}

uint64_t fw_aging_due(uint64_t target_us) {
    uint64_t total = 0;
    int i;
    for (i = 0; i < cfg.n_channels; i++)
        if (channels[i].active && channels[i].next_t <= target_us)
            total += (target_us - channels[i].next_t) / channels[i].interval_us + 1;
    return total;
}

uint64_t fw_next_event_us(void) {
    uint64_t t = UINT64_MAX;
    if (sw.active) t = sweep_next_t();
    if (has_running && running_done < t) t = running_done;
    else if (!has_running && q_count && now_us < t) t = now_us;
    return t;
}

void fw_yield(void) { yield_flag = 1; }

/* ---- safety -------------------------------------------------------------------------------------- */
void fw_interlock(int open) {
    if ((open ? 1 : 0) == interlock_open) return;
    interlock_open = open ? 1 : 0;
    if (open) {
        event(FP_EVENT_CODE_INTERLOCK_OPEN, NONE_CHANNEL, 0, 0.0f, "interlock open: all outputs off");
        outputs_off(FW_STOP_INTERLOCK);
    } else {
        event(FP_EVENT_CODE_INTERLOCK_CLOSED, NONE_CHANNEL, 0, 0.0f, "interlock closed");
    }
    flush_block();
}

void fw_aging_fault(uint16_t ch, uint8_t cause) {
    if (ch < cfg.n_channels && channels[ch].active) stop_channel(ch, cause);
    flush_block();
}

void fw_check_watchdog(void) {
    char d[65];
    if (wd_timeout_ms == 0 || wd_fired) return;
    if (hal_millis() - last_heard_ms < wd_timeout_ms) return;
    wd_fired = 1;
    counters.watchdog_expiries++;
    latched_faults |= FP_FAULT_WATCHDOG_EXPIRED;
    snprintf(d, sizeof d, "host silent > %lu ms: %s", (unsigned long)wd_timeout_ms,
             wd_policy == FP_WATCHDOG_POLICY_GO_SAFE ? "GO_SAFE" : "KEEP_AGING");
    event(FP_EVENT_CODE_WATCHDOG_EXPIRED, NONE_CHANNEL, 0, (float)wd_timeout_ms, d);
    if (wd_policy == FP_WATCHDOG_POLICY_GO_SAFE) outputs_off(FW_STOP_WATCHDOG);
    else smu_off(FP_SWEEP_END_ABORTED);
    flush_block();
}

/* ---- link, status, lifecycle ------------------------------------------------------------------- */
void fw_set_link(int up) {
    link_up = up ? 1 : 0;
    if (!link_up) { blk_n = 0; blk_stream = 0; }
}

void fw_emit_status(void) {
    fp_status_t m;
    status_msg(&m);
    EMIT(FP_MSG_STATUS, fp_status_pack, &m, 0);
}

static void new_boot_id(void) {
    uint32_t old = boot_id, b;
    do { b = hal_random_u32(); } while (b == 0 || b == old);
    boot_id = b;
}

static void reset_volatile(void) {
    int i;
    memset(&smu, 0, sizeof smu);
    smu.mode = FP_SMU_MODE_SOURCE_V;
    smu.range_index = AUTO_RANGE;
    smu.compliance = 1e-3f;
    smu.integration_ms = 20.0f;
    hal_smu_apply(&smu);
    memset(&sw, 0, sizeof sw);
    for (i = 0; i < FW_MAX_CHANNELS; i++) channels[i].active = 0;
    memset(pd_gain, cfg.pd_default_gain, sizeof pd_gain);
    memset(pd_auto, 1, sizeof pd_auto);
    wd_timeout_ms = 0; wd_policy = FP_WATCHDOG_POLICY_KEEP_AGING; wd_fired = 0;
    latched_faults = 0;
    q_head = q_count = 0; has_running = 0; busy_until = 0;
    memset(cache, 0, sizeof cache);
    rx_len = 0; rx_overrun = 0;
    blk_n = 0; blk_stream = 0;
}

static void new_rings(int64_t first) {
    ring_init(&r_aging, cfg.aging_ring_depth, first);
    ring_init(&r_sweep, cfg.sweep_ring_depth, first);
    ring_init(&r_spec, cfg.spectrum_ring_depth, first);
}

int fw_init(const fw_config_t *c) {
    if (c->n_channels < 1 || c->n_channels > FW_MAX_CHANNELS) return -1;
    if ((uint32_t)c->n_substrates * c->pixels_per_substrate > FW_MAX_PIXELS) return -1;
    if (c->aging_ring_depth < 1 || c->aging_ring_depth > FW_AGING_RING_MAX) return -1;
    if (c->sweep_ring_depth < 1 || c->sweep_ring_depth > FW_SWEEP_RING_MAX) return -1;
    if (c->spectrum_ring_depth < 1 || c->spectrum_ring_depth > FW_SPECTRUM_RING_MAX) return -1;
    cfg = *c;
    cfg.firmware_version[32] = 0;
    cfg.serial_number[32] = 0;
    memset(&counters, 0, sizeof counters);
    memset(&caps, 0, sizeof caps);
    hal_capabilities(&caps);
    if (caps.spectrometer_pixels > FW_SPECTRUM_PIXELS) return -1;
    caps.n_substrates = cfg.n_substrates;
    caps.pixels_per_substrate = cfg.pixels_per_substrate;
    caps.n_aging_channels = cfg.n_channels;
    caps.n_temperature_sensors = (uint8_t)(cfg.n_substrates + 1);
    caps.spectrum_kind = FP_SPECTRUM_KIND_PHOTON_COUNTS;
    caps.ring_depth = cfg.aging_ring_depth;
    caps.max_spectrum_integration_ms = MAX_SPECTRUM_INTEGRATION_MS;
    caps.max_dwell_ms = MAX_DWELL_MS;
    caps.min_aging_interval_ms = MIN_AGING_INTERVAL_MS;
    caps.max_aging_interval_ms = MAX_AGING_INTERVAL_MS;
    caps.max_sweep_points = MAX_SWEEP_POINTS;
    caps.max_pd_reads = MAX_PD_READS;
    now_us = 0;
    clock_base_us = 0;
    boot_id = 0;
    boot_notice = 0;
    interlock_open = hal_interlock_closed() ? 0 : 1;
    hello_busy = 0; hello_hash_override = 0;
    new_rings((int64_t)cfg.first_seq);
    reset_volatile();
    new_boot_id();
    last_heard_ms = hal_millis();
    return 0;
}

void fw_reboot(void) {
    int i;
    counters.reboots++;
    if (sw.active) {
        sw.active = 0;
        if (!cfg.reboot_loses_ring) {
            boot_notice = 1;
            boot_notice_msg.sweep_id = sw.sweep_id;
            boot_notice_msg.n_points = sw.n_emitted;
            boot_notice_msg.reason = FP_SWEEP_END_REBOOT;
            boot_notice_msg.last_seq = sw.last_seq < 0 ? NO_SEQ : (uint32_t)sw.last_seq;
        }
    }
    for (i = 0; i < cfg.n_channels; i++)
        if (channels[i].active) hal_aging_off((uint16_t)i);
    reset_volatile();
    new_boot_id();
    if (cfg.reboot_loses_ring) {
        new_rings(0);
        boot_notice = 0;
        clock_base_us = now_us;
    }
}

/* test knobs of the simulated board (sim/board.py hello_busy, hello_spec_hash) */
void fw_debug_hello(uint32_t busy, int override_hash, uint32_t spec_hash) {
    hello_busy = busy;
    hello_hash_override = override_hash ? 1 : 0;
    hello_hash = spec_hash;
}

const fw_counters_t *fw_counters(void) { return &counters; }
uint32_t fw_boot_id(void) { return boot_id; }
uint64_t fw_now_us(void) { return now_us; }
uint64_t fw_clock_us(void) { return now_us - clock_base_us; }
uint16_t fw_channel_pixel(uint16_t ch) { return ch < cfg.n_channels && channels[ch].active ? channels[ch].pixel : 0; }

size_t fw_status_payload(uint8_t *buf, size_t cap) {
    fp_status_t st;
    size_t n;
    status_msg(&st);
    n = fp_status_pack(&st, buf, cap);
    return n == FP_PACK_ERROR ? 0 : n;
}

static ring_t *ring_of(uint8_t stream) {
    return stream == FP_STREAM_AGING ? &r_aging : stream == FP_STREAM_SWEEP ? &r_sweep : &r_spec;
}

void fw_ring_info(uint8_t stream, int64_t *out) {
    const ring_t *r = ring_of(stream);
    out[0] = r->head; out[1] = ring_oldest(r); out[2] = r->acked; out[3] = r->overwritten_unacked;
    out[4] = r->overflow;
}

int fw_ring_record(uint8_t stream, int64_t seq, uint8_t *out) {
    const ring_t *r = ring_of(stream);
    if (stream > FP_STREAM_SWEEP || seq < ring_oldest(r) || seq >= r->head) return -1;
    if (stream == FP_STREAM_AGING) memcpy(out, aging_buf[(uint64_t)seq % r->depth], FP_AGING_SAMPLE_SIZE);
    else memcpy(out, sweep_buf[(uint64_t)seq % r->depth], FP_SWEEP_POINT_SIZE);
    return 0;
}

void fw_channel_schedule(uint16_t ch, uint64_t *next_t, uint64_t *interval_us) {
    int on = ch < cfg.n_channels && channels[ch].active;
    *next_t = on ? channels[ch].next_t : 0;
    *interval_us = on ? channels[ch].interval_us : 0;
}

uint64_t fw_next_command_us(void) {
    if (has_running) return running_done;
    if (q_count) return busy_until > now_us ? busy_until : now_us;
    return UINT64_MAX;
}
