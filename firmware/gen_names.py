"""Generate firmware/fw_names.h (message names and directions) from the spec.

    python firmware/gen_names.py          # rewrite it
    python firmware/gen_names.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from firmware_protocol.spec import MESSAGES

OUT = Path(__file__).resolve().parent / "fw_names.h"


def generate() -> str:
    lines = ["/* fw_names.h - GENERATED from firmware_protocol/spec.py (firmware/gen_names.py): "
             "message names and directions. */",
             "#ifndef FW_NAMES_H", "#define FW_NAMES_H", "static const char *fw_msg_name(uint8_t id) {",
             "    switch (id) {"]
    lines += [f'    case 0x{m.id:02X}: return "{m.name}";' for m in MESSAGES]
    lines += ['    default: return "?";', "    }", "}", "static int fw_is_request(uint8_t id) {",
              "    switch (id) {"]
    lines += [f"    case 0x{m.id:02X}:" for m in MESSAGES if m.direction == "host_to_board"]
    lines += ["        return 1;", "    default: return 0;", "    }", "}", "#endif", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    if "--check" in sys.argv:
        sys.exit(0 if OUT.read_text() == generate() else 1)
    OUT.write_text(generate())
