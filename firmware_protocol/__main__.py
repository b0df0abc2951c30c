"""``python -m firmware_protocol``: generators and link-debugging tools.

  c-header   print the C header firmware authors include
  docs       print docs/protocol.md
  python     print firmware_protocol/messages.py
  encode     one JSON object on stdin -> framed bytes on stdout
  decode     raw bytes on stdin -> one JSON object per line on stdout
  check      exit 1 if a generated file in the repository is stale
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from . import gen_c, gen_docs, gen_python
from .codec import EncodeError, FrameError, StreamDecoder, encode_message_json

ROOT = Path(__file__).resolve().parent.parent
GENERATED = {
    "firmware_protocol/messages.py": gen_python.generate,
    "firmware_protocol/firmware_protocol.h": gen_c.generate,
    "docs/protocol.md": gen_docs.generate,
}


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def _decode(stream: Any, out: Any) -> int:
    dec = StreamDecoder()
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        for ev in dec.feed(chunk):
            if isinstance(ev, FrameError):
                obj: dict[str, Any] = {"error": ev.reason, "detail": ev.detail, "bytes": ev.nbytes}
            else:
                obj = ev.message.to_dict()
                obj["_seq"] = ev.header.seq
                obj["_flags"] = ev.header.flags
            out.write(json.dumps(_jsonable(obj)) + "\n")
    if dec.buffered:
        out.write(json.dumps({"error": "incomplete", "detail": "bytes after the last delimiter",
                              "bytes": dec.buffered}) + "\n")
    return 0


def _encode(seq: int, flags: int) -> int:
    try:
        obj = json.loads(sys.stdin.read())
        sys.stdout.buffer.write(encode_message_json(obj, seq, flags))
    except json.JSONDecodeError as ex:
        print(f"error: stdin is not JSON: {ex}", file=sys.stderr)
        return 2
    except EncodeError as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 2
    return 0


def _check(write: bool) -> int:
    """1 when a generated file in the repo is stale (rewritten instead with ``write``)."""
    stale = []
    for rel, gen in GENERATED.items():
        text = gen() + ("\n" if rel.endswith(".md") else "")
        path = ROOT / rel
        if not path.exists() or path.read_text() != text:
            stale.append(rel)
            if write:
                path.write_text(text)
    if stale and not write:
        print("stale generated files (run python -m firmware_protocol check --write): "
              + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m firmware_protocol", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("c-header", help="print the generated C header")
    sub.add_parser("docs", help="print the generated docs/protocol.md")
    sub.add_parser("python", help="print the generated messages.py")
    e = sub.add_parser("encode", help='JSON {"type": "ping", "nonce": 1} on stdin -> frame bytes')
    e.add_argument("--seq", type=int, default=0, help="request sequence number (default 0)")
    e.add_argument("--flags", type=int, default=0, help="frame flags (default 0)")
    sub.add_parser("decode", help="raw bytes on stdin -> JSON lines (never fails on bad bytes)")
    c = sub.add_parser("check", help="fail if a generated file in the repo is stale")
    c.add_argument("--write", action="store_true", help="rewrite stale files instead")
    args = p.parse_args(argv)

    if args.cmd == "c-header":
        sys.stdout.write(gen_c.generate())
    elif args.cmd == "docs":
        sys.stdout.write(gen_docs.generate() + "\n")
    elif args.cmd == "python":
        sys.stdout.write(gen_python.generate())
    elif args.cmd == "encode":
        return _encode(args.seq, args.flags)
    elif args.cmd == "decode":
        return _decode(sys.stdin.buffer, sys.stdout)
    elif args.cmd == "check":
        return _check(args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
