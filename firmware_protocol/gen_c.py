"""Generate the C header firmware authors include (``python -m firmware_protocol c-header``).

Header-only C99: message structs, little-endian pack/unpack per message, CRC-32 with the
per-message seeds, COBS framing. Compiles with ``gcc -std=c99 -Wall -Wextra -Werror``.
"""

from __future__ import annotations

from .spec import (
    CRC_SEEDS,
    ENUMS,
    FROZEN_HEADER_VERSION,
    HEADER_SIZE,
    MAX_PAYLOAD,
    MESSAGES,
    PROTOCOL_VERSION,
    RECORDS,
    SCALAR_TYPES,
    SPEC_HASH,
    Field,
    Message,
    Record,
)

_PRELUDE = r"""
/* ---- little-endian helpers ---------------------------------------------------------------- */
static inline void fp_put_u8(uint8_t *b, uint8_t v) { b[0] = v; }
static inline void fp_put_u16(uint8_t *b, uint16_t v) { b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); }
static inline void fp_put_u32(uint8_t *b, uint32_t v) {
    b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); b[2] = (uint8_t)(v >> 16); b[3] = (uint8_t)(v >> 24);
}
static inline void fp_put_u64(uint8_t *b, uint64_t v) { fp_put_u32(b, (uint32_t)v); fp_put_u32(b + 4, (uint32_t)(v >> 32)); }
static inline void fp_put_i8(uint8_t *b, int8_t v) { fp_put_u8(b, (uint8_t)v); }
static inline void fp_put_i16(uint8_t *b, int16_t v) { fp_put_u16(b, (uint16_t)v); }
static inline void fp_put_i32(uint8_t *b, int32_t v) { fp_put_u32(b, (uint32_t)v); }
static inline void fp_put_f32(uint8_t *b, float v) { uint32_t u; memcpy(&u, &v, 4); fp_put_u32(b, u); }
static inline void fp_put_f64(uint8_t *b, double v) { uint64_t u; memcpy(&u, &v, 8); fp_put_u64(b, u); }
static inline uint8_t fp_get_u8(const uint8_t *b) { return b[0]; }
static inline uint16_t fp_get_u16(const uint8_t *b) { return (uint16_t)(b[0] | (b[1] << 8)); }
static inline uint32_t fp_get_u32(const uint8_t *b) {
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}
static inline uint64_t fp_get_u64(const uint8_t *b) { return (uint64_t)fp_get_u32(b) | ((uint64_t)fp_get_u32(b + 4) << 32); }
static inline int8_t fp_get_i8(const uint8_t *b) { return (int8_t)b[0]; }
static inline int16_t fp_get_i16(const uint8_t *b) { return (int16_t)fp_get_u16(b); }
static inline int32_t fp_get_i32(const uint8_t *b) { return (int32_t)fp_get_u32(b); }
static inline float fp_get_f32(const uint8_t *b) { uint32_t u = fp_get_u32(b); float v; memcpy(&v, &u, 4); return v; }
static inline double fp_get_f64(const uint8_t *b) { uint64_t u = fp_get_u64(b); double v; memcpy(&v, &u, 8); return v; }

/* ---- CRC-32 (IEEE 802.3, reflected, as zlib's crc32; `crc` is the previous result) --------- */
static inline uint32_t fp_crc32(uint32_t crc, const uint8_t *data, size_t len) {
    size_t i; int k;
    crc = ~crc;
    for (i = 0; i < len; i++) {
        crc ^= data[i];
        for (k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* ---- COBS ------------------------------------------------------------------------------- */
/* Encodes len bytes into out (no delimiter). Returns the encoded length, or 0 if cap is short. */
static inline size_t fp_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
    size_t r, w = 1, code_pos = 0; uint8_t code = 1;
    if (cap < 1) return 0;
    for (r = 0; r < len; r++) {
        if (w >= cap) return 0;
        if (in[r] == 0) { out[code_pos] = code; code_pos = w++; code = 1; }
        else {
            out[w++] = in[r]; code++;
            if (code == 0xFF && r + 1 < len) {
                if (w >= cap) return 0;
                out[code_pos] = code; code_pos = w++; code = 1;
            }
        }
    }
    out[code_pos] = code;
    return w;
}
/* Decodes len bytes (no delimiter) into out. Returns the decoded length, or -1 on bad input. */
static inline long fp_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap) {
    size_t r = 0, w = 0; uint8_t code, i;
    while (r < len) {
        code = in[r++];
        if (code == 0) return -1;
        for (i = 1; i < code; i++) {
            if (r >= len || in[r] == 0 || w >= cap) return -1;
            out[w++] = in[r++];
        }
        if (code != 0xFF && r < len) { if (w >= cap) return -1; out[w++] = 0; }
    }
    return (long)w;
}
"""


def _c_type(t: str) -> str:
    return SCALAR_TYPES[t][2]


def _struct_fields(fields: tuple[Field, ...]) -> list[str]:
    lines = []
    for f in fields:
        unit = f"  /* {f.unit} */" if f.unit else ""
        if f.is_scalar:
            lines.append(f"    {_c_type(f.type)} {f.name};{unit}")
        elif f.type == "str":
            lines.append(f"    char {f.name}[{f.max_len + 1}];  /* NUL-terminated */")
        elif f.type == "records":
            lines.append(f"    fp_{f.record}_t {f.name}[{f.max_len}];")
            lines.append(f"    uint16_t {f.name}_count;")
        else:
            lines.append(f"    {_c_type(f.elem_type)} {f.name}[{f.max_len}];{unit}")
            lines.append(f"    uint16_t {f.name}_count;")
    return lines


def _c_num(f: Field, v: float) -> str:
    if f.type.startswith("f"):
        return f"{v!r}f" if f.type == "f32" else repr(v)
    return f"{int(v)}u"


def _pack_scalar(f: Field, src: str) -> list[str]:
    size = SCALAR_TYPES[f.type][1]
    return [f"    if (n + {size} > cap) return FP_PACK_ERROR;",
            f"    fp_put_{f.type}(buf + n, {src}); n += {size};"]


def _unpack_scalar(f: Field, dst: str) -> list[str]:
    size = SCALAR_TYPES[f.type][1]
    return [f"    if (n + {size} > len) return -1;",
            f"    {dst} = fp_get_{f.type}(buf + n); n += {size};"]


def _pack_field(f: Field) -> list[str]:
    """C lines serialising field ``f`` of ``*m`` into ``buf``."""
    o: list[str] = []
    w = o.append
    if f.is_scalar:
        o.extend(_pack_scalar(f, f"m->{f.name}"))
    elif f.type == "str":
        w(f"    {{ size_t l = strlen(m->{f.name}); if (l > {f.max_len} || n + 1 + l > cap) return FP_PACK_ERROR;")
        w(f"      buf[n++] = (uint8_t)l; memcpy(buf + n, m->{f.name}, l); n += l; }}")
    elif f.type == "records":
        rs = f"FP_{f.record.upper()}_SIZE"
        w(f"    {{ uint16_t i; if (m->{f.name}_count > {f.max_len} || "
          f"n + 2 + (size_t)m->{f.name}_count * {rs} > cap) return FP_PACK_ERROR;")
        w(f"      fp_put_u16(buf + n, m->{f.name}_count); n += 2;")
        w(f"      for (i = 0; i < m->{f.name}_count; i++) {{ "
          f"fp_{f.record}_put(buf + n, &m->{f.name}[i]); n += {rs}; }} }}")
    else:
        es = SCALAR_TYPES[f.elem_type][1]
        w(f"    {{ uint16_t i; if (m->{f.name}_count > {f.max_len} || "
          f"n + 2 + (size_t)m->{f.name}_count * {es} > cap) return FP_PACK_ERROR;")
        w(f"      fp_put_u16(buf + n, m->{f.name}_count); n += 2;")
        w(f"      for (i = 0; i < m->{f.name}_count; i++) {{ "
          f"fp_put_{f.elem_type}(buf + n, m->{f.name}[i]); n += {es}; }} }}")
    return o


def _unpack_field(f: Field) -> list[str]:
    """C lines parsing field ``f`` of ``*m`` from ``buf``."""
    o: list[str] = []
    w = o.append
    if f.extension:  # an older peer's payload ends before it: it stays 0 / empty
        w(f"    if (n >= len) return 0;  /* extension field {f.name} absent */")
    if f.is_scalar:
        o.extend(_unpack_scalar(f, f"m->{f.name}"))
    elif f.type == "str":
        w("    { size_t l; if (n + 1 > len) return -1; l = buf[n++];")
        w(f"      if (l > {f.max_len} || n + l > len) return -1;")
        w(f"      memcpy(m->{f.name}, buf + n, l); m->{f.name}[l] = 0; n += l; }}")
    elif f.type == "records":
        rs = f"FP_{f.record.upper()}_SIZE"
        w(f"    {{ uint16_t i; if (n + 2 > len) return -1; m->{f.name}_count = fp_get_u16(buf + n); n += 2;")
        w(f"      if (m->{f.name}_count > {f.max_len} || "
          f"n + (size_t)m->{f.name}_count * {rs} > len) return -1;")
        w(f"      for (i = 0; i < m->{f.name}_count; i++) {{ "
          f"fp_{f.record}_get(buf + n, &m->{f.name}[i]); n += {rs}; }} }}")
    else:
        es = SCALAR_TYPES[f.elem_type][1]
        w(f"    {{ uint16_t i; if (n + 2 > len) return -1; m->{f.name}_count = fp_get_u16(buf + n); n += 2;")
        w(f"      if (m->{f.name}_count > {f.max_len} || "
          f"n + (size_t)m->{f.name}_count * {es} > len) return -1;")
        w(f"      for (i = 0; i < m->{f.name}_count; i++) {{ "
          f"m->{f.name}[i] = fp_get_{f.elem_type}(buf + n); n += {es}; }} }}")
    return o


def _record_lines(r: Record) -> list[str]:
    """The C struct of a record and its put/get."""
    o: list[str] = []
    w = o.append
    w(f"/* {r.doc} ({r.size} bytes on the wire) */")
    w("typedef struct {")
    o.extend(_struct_fields(r.fields))
    w(f"}} fp_{r.name}_t;")
    w(f"#define FP_{r.name.upper()}_SIZE {r.size}")
    w(f"static inline void fp_{r.name}_put(uint8_t *buf, const fp_{r.name}_t *r) {{")
    w("    size_t n = 0;")
    for f in r.fields:
        w(f"    fp_put_{f.type}(buf + n, r->{f.name}); n += {SCALAR_TYPES[f.type][1]};")
    w("    (void)n;")
    w("}")
    w(f"static inline void fp_{r.name}_get(const uint8_t *buf, fp_{r.name}_t *r) {{")
    w("    size_t n = 0;")
    for f in r.fields:
        w(f"    r->{f.name} = fp_get_{f.type}(buf + n); n += {SCALAR_TYPES[f.type][1]};")
    w("    (void)n;")
    w("}")
    w("")
    return o


def _message_lines(m: Message) -> list[str]:
    """The C id, seed, ranges, struct, pack and unpack of a message."""
    o: list[str] = []
    w = o.append
    up = m.name.upper()
    w(f"/* {m.name} ({m.direction.replace('_', ' ')}{', acknowledged' if m.acked else ''}): "
      f"{m.doc} */")
    w(f"#define FP_MSG_{up} 0x{m.id:02X}")
    w(f"#define FP_MSG_{up}_CRC_SEED 0x{CRC_SEEDS[m.id]:08X}u")
    for f in m.fields:
        if f.range is not None:  # the values any board accepts (the board's own: capabilities)
            rng, fu = f.range, f"FP_{up}_{f.name.upper()}"
            w(f"#define {fu}_MIN {_c_num(f, rng.lo)}  /* {'exclusive' if rng.lo_open else 'inclusive'} */")
            w(f"#define {fu}_MAX {_c_num(f, rng.hi)}  /* inclusive */")
    w("typedef struct {")
    body = _struct_fields(m.fields)
    o.extend(body if body else ["    uint8_t _unused;"])
    w(f"}} fp_{m.name}_t;")
    w("/* Serialise into buf (capacity cap); returns the payload length or FP_PACK_ERROR. */")
    w(f"static inline size_t fp_{m.name}_pack(const fp_{m.name}_t *m, uint8_t *buf, size_t cap) {{")
    w("    size_t n = 0;")
    if not m.fields:
        w("    (void)m; (void)buf; (void)cap;")
    for f in m.fields:
        o.extend(_pack_field(f))
    w("    return n;")
    w("}")
    w("/* Parse a payload; returns 0, or -1 if it is malformed. Extension fields missing at the")
    w("   end are 0 / empty; bytes after the last known field (a newer peer's) are ignored. */")
    w(f"static inline int fp_{m.name}_unpack(fp_{m.name}_t *m, const uint8_t *buf, size_t len) {{")
    w("    size_t n = 0;")
    w("    memset(m, 0, sizeof *m);")
    if not m.fields:
        w("    (void)buf;")
    for f in m.fields:
        o.extend(_unpack_field(f))
    w("    (void)n; (void)len;")
    w("    return 0;  /* bytes after the last known field: a newer peer's extensions */")
    w("}")
    w("")
    return o


def generate() -> str:
    """The C header."""
    o: list[str] = []
    w = o.append
    w("/* firmware_protocol.h - GENERATED by `python -m firmware_protocol c-header`: do not edit.")
    w(" *")
    w(" * The LED test board's host protocol: frames are COBS(header | payload | crc32) 0x00.")
    w(" * Header: version u8, msg_id u8, flags u8, seq u16, payload_len u16 (little-endian).")
    w(" * CRC-32 (zlib) over header and payload, starting from the message's FP_*_CRC_SEED.")
    w(" * C99, header-only. See docs/protocol.md. */")
    w("#ifndef FIRMWARE_PROTOCOL_H")
    w("#define FIRMWARE_PROTOCOL_H")
    w("")
    w("#include <stddef.h>")
    w("#include <stdint.h>")
    w("#include <string.h>")
    w("")
    w(f"#define FP_PROTOCOL_VERSION {PROTOCOL_VERSION}")
    w(f"#define FP_FROZEN_HEADER_VERSION {FROZEN_HEADER_VERSION}  /* header version of hello, hello_reply */")
    w(f"#define FP_SPEC_HASH 0x{SPEC_HASH:08X}u")
    w(f"#define FP_MAX_PAYLOAD {MAX_PAYLOAD}")
    w(f"#define FP_HEADER_SIZE {HEADER_SIZE}")
    w("#define FP_CRC_SIZE 4")
    w("#define FP_MAX_FRAME (FP_HEADER_SIZE + FP_MAX_PAYLOAD + FP_CRC_SIZE)")
    w("#define FP_MAX_ENCODED (FP_MAX_FRAME + FP_MAX_FRAME / 254 + 2)")
    w("#define FP_PACK_ERROR ((size_t)-1)")
    w("")
    for e in ENUMS:
        pre = "FP_" + "".join("_" + c if c.isupper() else c for c in e.__name__).lstrip("_").upper()
        w(f"/* {e.__name__} */")
        for k, v in e.__members__.items():
            w(f"#define {pre}_{k} {int(v)}")
        w("")
    w(_PRELUDE)
    w("/* ---- records -------------------------------------------------------------------------- */")
    for r in RECORDS:
        o.extend(_record_lines(r))
    w("/* ---- messages ------------------------------------------------------------------------- */")
    for m in MESSAGES:
        o.extend(_message_lines(m))
    w("/* ---- framing -------------------------------------------------------------------------- */")
    w("static inline int fp_crc_seed(uint8_t msg_id, uint32_t *seed) {")
    w("    switch (msg_id) {")
    for m in MESSAGES:
        w(f"    case FP_MSG_{m.name.upper()}: *seed = FP_MSG_{m.name.upper()}_CRC_SEED; return 0;")
    w("    default: return -1;")
    w("    }")
    w("}")
    w("")
    w("/* The frozen handshake's frames carry FP_FROZEN_HEADER_VERSION whatever the protocol version,")
    w("   so peers of any two versions handshake and say they differ. */")
    w("static inline int fp_is_frozen(uint8_t msg_id) {")
    w("    return " + " || ".join(f"msg_id == FP_MSG_{m.name.upper()}" for m in MESSAGES if m.frozen) + ";")
    w("}")
    w("")
    w("typedef struct { uint8_t version, msg_id, flags; uint16_t seq, payload_len; } fp_header_t;")
    w("")
    w("""/* Build a complete frame (COBS-encoded, 0x00-terminated) around payload. Returns its length,
 * or 0 if the id is unknown, the payload too long or out too small. */
static inline size_t fp_frame_encode(uint8_t msg_id, uint8_t flags, uint16_t seq,
                                     const uint8_t *payload, size_t len, uint8_t *out, size_t cap) {
    uint8_t raw[FP_MAX_FRAME];
    uint32_t seed, crc;
    size_t n;
    if (len > FP_MAX_PAYLOAD || fp_crc_seed(msg_id, &seed) != 0) return 0;
    raw[0] = fp_is_frozen(msg_id) ? FP_FROZEN_HEADER_VERSION : FP_PROTOCOL_VERSION;
    raw[1] = msg_id; raw[2] = flags;
    fp_put_u16(raw + 3, seq); fp_put_u16(raw + 5, (uint16_t)len);
    if (len) memcpy(raw + FP_HEADER_SIZE, payload, len);
    crc = fp_crc32(seed, raw, FP_HEADER_SIZE + len);
    fp_put_u32(raw + FP_HEADER_SIZE + len, crc);
    if (cap < 1) return 0;
    n = fp_cobs_encode(raw, FP_HEADER_SIZE + len + FP_CRC_SIZE, out, cap - 1);
    if (n == 0) return 0;
    out[n] = 0;
    return n + 1;
}

#define FP_FRAME_OK 0
#define FP_FRAME_ERR_COBS (-1)
#define FP_FRAME_ERR_SHORT (-2)
#define FP_FRAME_ERR_LENGTH (-3)
#define FP_FRAME_ERR_UNKNOWN_ID (-4)
#define FP_FRAME_ERR_CRC (-5)
#define FP_FRAME_ERR_VERSION (-6)

/* Check one received frame (the bytes between two 0x00 delimiters, without them). raw must hold
 * FP_MAX_FRAME bytes; on success *payload points into raw. */
static inline int fp_frame_decode(const uint8_t *enc, size_t len, uint8_t *raw, fp_header_t *h,
                                  const uint8_t **payload) {
    long n = fp_cobs_decode(enc, len, raw, FP_MAX_FRAME);
    uint32_t seed;
    if (n < 0) return FP_FRAME_ERR_COBS;
    if (n < FP_HEADER_SIZE + FP_CRC_SIZE) return FP_FRAME_ERR_SHORT;
    h->version = raw[0]; h->msg_id = raw[1]; h->flags = raw[2];
    h->seq = fp_get_u16(raw + 3); h->payload_len = fp_get_u16(raw + 5);
    if ((long)h->payload_len != n - FP_HEADER_SIZE - FP_CRC_SIZE || h->payload_len > FP_MAX_PAYLOAD)
        return FP_FRAME_ERR_LENGTH;
    if (fp_crc_seed(h->msg_id, &seed) != 0) return FP_FRAME_ERR_UNKNOWN_ID;
    if (fp_crc32(seed, raw, (size_t)n - FP_CRC_SIZE) != fp_get_u32(raw + n - FP_CRC_SIZE))
        return FP_FRAME_ERR_CRC;
    if (h->version != FP_PROTOCOL_VERSION
        && !(fp_is_frozen(h->msg_id) && h->version == FP_FROZEN_HEADER_VERSION))
        return FP_FRAME_ERR_VERSION;
    *payload = raw + FP_HEADER_SIZE;
    return FP_FRAME_OK;
}
""")
    w("/* Any message, for generic code (tests, loggers). */")
    w("typedef union {")
    for m in MESSAGES:
        w(f"    fp_{m.name}_t {m.name};")
    w("} fp_message_t;")
    w("")
    w("static inline int fp_unpack(uint8_t msg_id, fp_message_t *m, const uint8_t *buf, size_t len) {")
    w("    switch (msg_id) {")
    for m in MESSAGES:
        w(f"    case FP_MSG_{m.name.upper()}: return fp_{m.name}_unpack(&m->{m.name}, buf, len);")
    w("    default: return -1;")
    w("    }")
    w("}")
    w("static inline size_t fp_pack(uint8_t msg_id, const fp_message_t *m, uint8_t *buf, size_t cap) {")
    w("    switch (msg_id) {")
    for m in MESSAGES:
        w(f"    case FP_MSG_{m.name.upper()}: return fp_{m.name}_pack(&m->{m.name}, buf, cap);")
    w("    default: return FP_PACK_ERROR;")
    w("    }")
    w("}")
    w("")
    w("#endif /* FIRMWARE_PROTOCOL_H */")
    return "\n".join(o) + "\n"
