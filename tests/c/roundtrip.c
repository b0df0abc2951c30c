/* Reads frames from stdin, decodes each with the generated header, re-encodes the decoded
 * message with the same seq and flags, and writes the new frame to stdout. Frames it rejects
 * are reported on stderr as "reject <code>". With the argument "gen" it instead writes a few
 * frames built from C structs (values the Python test knows). */
#include <stdio.h>
#include <stdlib.h>
#include "firmware_protocol.h"

static void emit(uint8_t id, uint8_t flags, uint16_t seq, const fp_message_t *m) {
    uint8_t payload[FP_MAX_PAYLOAD], out[FP_MAX_ENCODED];
    size_t n = fp_pack(id, m, payload, sizeof payload);
    size_t k;
    if (n == FP_PACK_ERROR) { fprintf(stderr, "pack failed %u\n", id); exit(3); }
    k = fp_frame_encode(id, flags, seq, payload, n, out, sizeof out);
    if (k == 0) { fprintf(stderr, "frame failed %u\n", id); exit(3); }
    fwrite(out, 1, k, stdout);
}

static int gen(void) {
    fp_message_t m;
    uint16_t i;
    memset(&m, 0, sizeof m);
    m.ping.nonce = 0xDEADBEEFu;
    emit(FP_MSG_PING, 0, 42, &m);
    memset(&m, 0, sizeof m);
    m.hello_reply.protocol_version = FP_PROTOCOL_VERSION;
    m.hello_reply.spec_hash = FP_SPEC_HASH;
    m.hello_reply.boot_id = 7;
    strcpy(m.hello_reply.firmware_version, "c-test 1.0");
    strcpy(m.hello_reply.serial_number, "SN-0001");
    emit(FP_MSG_HELLO_REPLY, 1, 1, &m);
    memset(&m, 0, sizeof m);
    m.aging_samples.records_count = 30;
    for (i = 0; i < 30; i++) {
        m.aging_samples.records[i].seq = 4294967280u + i; /* crosses the 32-bit wrap */
        m.aging_samples.records[i].t_us = 1000000ull * i + 5000000000ull;
        m.aging_samples.records[i].channel = (uint16_t)(i % 4 + 250);
        m.aging_samples.records[i].pixel = (uint16_t)(i % 8 + 251);
        m.aging_samples.records[i].current_a = 1e-4f * (float)(i + 1);
        m.aging_samples.records[i].voltage_v = 3.0f + 0.01f * (float)i;
        m.aging_samples.records[i].photodiode_a = -2.5e-9f;
        m.aging_samples.records[i].temperature_c = 25.5f;
    }
    emit(FP_MSG_AGING_SAMPLES, FP_FRAME_FLAGS_STREAM, 0, &m);
    memset(&m, 0, sizeof m);
    m.capabilities.smu_voltage_ranges_v_count = 2;
    m.capabilities.smu_voltage_ranges_v[0] = 2.0f;
    m.capabilities.smu_voltage_ranges_v[1] = 20.0f;
    m.capabilities.wavelength_cal_count = 3;
    m.capabilities.wavelength_cal[0] = 340.25;
    m.capabilities.wavelength_cal[1] = 1.5;
    m.capabilities.wavelength_cal[2] = -1e-4;
    m.capabilities.spectrometer_pixels = 288;
    emit(FP_MSG_CAPABILITIES, 1, 9, &m);
    return 0;
}

int main(int argc, char **argv) {
    static uint8_t buf[1 << 22];
    size_t len = fread(buf, 1, sizeof buf, stdin), start = 0, i;
    if (argc > 1 && strcmp(argv[1], "gen") == 0) return gen();
    for (i = 0; i < len; i++) {
        if (buf[i] != 0) continue;
        if (i > start) {
            uint8_t raw[FP_MAX_FRAME];
            const uint8_t *payload;
            fp_header_t h;
            fp_message_t m;
            int rc = fp_frame_decode(buf + start, i - start, raw, &h, &payload);
            if (rc == FP_FRAME_OK) rc = fp_unpack(h.msg_id, &m, payload, h.payload_len) ? -100 : 0;
            if (rc != 0) fprintf(stderr, "reject %d\n", rc);
            else emit(h.msg_id, h.flags, h.seq, &m);
        }
        start = i + 1;
    }
    return 0;
}
