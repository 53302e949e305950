"""A held-out corpus of malformed request bodies: every one must get a 4xx, and the service must stay healthy."""

from __future__ import annotations

import json

from service.examples import EXAMPLE_RECORD

VALID = json.dumps(EXAMPLE_RECORD).encode()
MALFORMED: dict[str, bytes] = {
    "invalid UTF-8 in a value": VALID.replace(b'"Caucasian"', b'"Cau\xff\xfeasian"'),
    "overlong UTF-8 (0xC0 0xAF)": VALID.replace(b'"Caucasian"', b'"\xc0\xaf"'),
    "overlong NUL (0xC0 0x80)": VALID.replace(b'"428"', b'"4\xc0\x808"'),
    "lone high surrogate escape": VALID.replace(b'"428"', b'"\\ud800"'),
    "lone low surrogate escape": VALID.replace(b'"V45"', b'"\\udc00x"'),
    "encoded surrogate bytes": VALID.replace(b'"V45"', b'"\xed\xa0\x80"'),
    "Latin-1 value": VALID.replace(b'"Caucasian"', '"Caucésian"'.encode("latin-1")),
    "UTF-16 body": json.dumps(EXAMPLE_RECORD).encode("utf-16"),
    "UTF-8 BOM": b"\xef\xbb\xbf" + VALID,
    "truncated": VALID[:-7],
    "trailing garbage": VALID + b"}}",
    "NaN literal": VALID.replace(b'"time_in_hospital": 3', b'"time_in_hospital": NaN'),
    "huge integer": VALID.replace(b'"time_in_hospital": 3', b'"time_in_hospital": ' + b"9" * 4000),
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "empty": b"",
    "null": b"null",
    "a string": b'"hello"',
    "duplicate keys": VALID.replace(b"{", b'{"gender": 7, ', 1),
    "control characters": VALID.replace(b'"428"', b'"4\x008"'),
}
