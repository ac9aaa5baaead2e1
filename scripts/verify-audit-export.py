#!/usr/bin/env python3
"""Verify an audit chain exported by `approvald audit export` (JSON Lines),
independently of approvald: standard library only.

    scripts/verify-audit-export.py FILE      (or - for stdin)

Each line is one entry. Its hash is SHA-256 over the previous entry's hash
(32 raw bytes; 32 zero bytes before seq 1) followed by the canonical JSON of
the entry without `seq`, `hash` and `prev_hash`: keys sorted, no whitespace,
non-ASCII left as UTF-8. Prints `N/N entries valid`, or the first broken seq,
and exits 0 or 1.
"""
import hashlib
import json
import sys

GENESIS = "0" * 64


def canonical(entry):
    body = {k: v for k, v in entry.items() if k not in ("seq", "hash", "prev_hash")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def main(path):
    src = sys.stdin if path == "-" else open(path, encoding="utf-8")
    entries = [json.loads(line) for line in src if line.strip()]
    prev, want, valid = None, None, 0
    for e in entries:
        seq = e["seq"]
        if prev is None:  # the first line links to an entry before the export, if any
            prev, want = e["prev_hash"] if seq > 1 else GENESIS, seq
        digest = hashlib.sha256(bytes.fromhex(prev) + canonical(e).encode("utf-8")).hexdigest()
        problem = None
        if seq != want:
            problem = f"expected seq {want}, found seq {seq}"
        elif e["prev_hash"] != prev or e["hash"] != digest:
            problem = f"entry {e['id']} does not match its hash or does not link to seq {seq - 1}"
        if problem:
            print(f"{valid}/{len(entries)} entries valid; first break at seq {want}: {problem}")
            return 1
        prev, want, valid = e["hash"], want + 1, valid + 1
    print(f"{valid}/{len(entries)} entries valid")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
