/* fw_names.h - GENERATED from firmware_protocol/spec.py (firmware/gen_names.py): message names and directions. */
#ifndef FW_NAMES_H
#define FW_NAMES_H
static const char *fw_msg_name(uint8_t id) {
    switch (id) {
    case 0x01: return "hello";
    case 0x02: return "hello_reply";
    case 0x03: return "ok";
    case 0x04: return "error";
    case 0x05: return "get_capabilities";
    case 0x06: return "capabilities";
    case 0x07: return "ping";
    case 0x08: return "pong";
    case 0x09: return "get_status";
    case 0x0A: return "status";
    case 0x0B: return "all_off";
    case 0x0C: return "set_watchdog";
    case 0x0D: return "event";
    case 0x10: return "mux_select";
    case 0x11: return "smu_configure";
    case 0x12: return "smu_output";
    case 0x13: return "smu_measure";
    case 0x14: return "smu_reading";
    case 0x15: return "sweep_start";
    case 0x16: return "sweep_abort";
    case 0x17: return "sweep_done";
    case 0x18: return "aging_start";
    case 0x19: return "aging_set";
    case 0x1A: return "aging_stop";
    case 0x1B: return "pd_configure";
    case 0x1C: return "pd_read";
    case 0x1D: return "pd_reading";
    case 0x1E: return "spectrum_acquire";
    case 0x1F: return "spectrum";
    case 0x20: return "aging_samples";
    case 0x21: return "sweep_points";
    case 0x22: return "stream_ack";
    case 0x23: return "stream_replay";
    default: return "?";
    }
}
static int fw_is_request(uint8_t id) {
    switch (id) {
    case 0x01:
    case 0x05:
    case 0x07:
    case 0x09:
    case 0x0B:
    case 0x0C:
    case 0x10:
    case 0x11:
    case 0x12:
    case 0x13:
    case 0x15:
    case 0x16:
    case 0x18:
    case 0x19:
    case 0x1A:
    case 0x1B:
    case 0x1C:
    case 0x1E:
    case 0x22:
    case 0x23:
        return 1;
    default: return 0;
    }
}
#endif
