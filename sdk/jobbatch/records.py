"""Records of a JSON Lines or CSV file: where shards start, found in one streaming pass, and parsed.

An object-storage payload is too big to copy into the cluster, so the operator reads it once, in
chunks, and keeps only where every shard's first record starts (``Indexer``); each worker then reads
just its own byte range and parses the records in it (``parse``). Memory stays at one chunk plus one
record whatever the object's size.

What a record is:

- JSON Lines: one JSON value per line; lines end at ``\\n``; blank lines are not records.
- CSV (RFC 4180): the first record is the header (a UTF-8 byte order mark before it is dropped); a
  record ends at a ``\\n`` outside quotes (an even number of ``"`` before it, doubled quotes
  included); empty lines (``\\n`` or ``\\r\\n`` alone) are not records, as for Python's csv module.
  Each record is an object of the header's names to string values. Line ends are ``\\n`` or
  ``\\r\\n``; a file of bare ``\\r`` line ends is refused (its header would be the whole file).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from typing import Any, Literal

Format = Literal["JSONLines", "CSV"]
MAX_RECORD_BYTES = 1 << 20  # a longer record is refused: it would have to be held whole
_CSV_TOKENS = re.compile(rb'["\n]')
_BOM = b"\xef\xbb\xbf"


class RecordError(ValueError):
    """Bytes that are not records of the format; ``reason`` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


class Indexer:
    """Fed a file's bytes in order, in chunks of any size: counts records and notes shard starts.

    ``offsets[k]`` is the byte offset of the first record of shard k (record ``k * shard_size``),
    and, after ``finish``, ``offsets[-1]`` is the file's size: shard k is bytes
    ``offsets[k]:offsets[k+1]``. Complete records are handed back by ``feed``/``finish`` as they are
    found (with their index), so a caller can validate them without holding more than one.
    """

    def __init__(self, fmt: Format, shard_size: int, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self.format = fmt
        self.shard_size = shard_size
        self.max_record_bytes = max_record_bytes
        self.offsets: list[int] = []
        self.count = 0
        self.header: bytes | None = None  # CSV: the header record, line end included
        self._carry = b""  # the unfinished record at the end of what was fed
        self._carry_start = 0  # its offset in the file
        self._quotes = 0  # CSV: '"' seen in the unfinished record (parity is what matters)
        self._scanned = 0  # bytes of the carry already scanned for line ends
        self.size = 0

    def feed(self, chunk: bytes) -> Iterator[tuple[int, bytes]]:
        """(record index, record bytes) of each record that ends in ``chunk``."""
        self.size += len(chunk)
        buf = self._carry + chunk
        start = 0  # of the current record in buf
        pos = self._scanned
        if self.format == "JSONLines":
            while (end := buf.find(b"\n", pos)) != -1:
                yield from self._record(buf, start, end + 1)
                start = pos = end + 1
        else:
            quotes = self._quotes
            for match in _CSV_TOKENS.finditer(buf, pos):
                if match.group() == b'"':
                    quotes += 1
                elif quotes % 2 == 0:
                    end = match.end()
                    yield from self._record(buf, start, end)
                    start, quotes = end, 0
            self._quotes = quotes
        self._carry_start += start
        self._carry = buf[start:]
        self._scanned = len(self._carry)
        if len(self._carry) > self.max_record_bytes:
            raise RecordError(
                "PayloadRecordTooLarge",
                f"the record at byte {self._carry_start} is over {self.max_record_bytes} bytes",
            )

    def finish(self) -> Iterator[tuple[int, bytes]]:
        """The last record (one without a line end), then closes the offsets with the file's size."""
        if self.format == "CSV" and self._quotes % 2:
            raise RecordError("InvalidPayload", f"the CSV record at byte {self._carry_start} has an unclosed quote")
        if self._carry:
            buf, self._carry = self._carry, b""
            yield from self._record(buf, 0, len(buf))
        if self.format == "CSV" and self.header is None:
            raise RecordError("InvalidPayload", "the CSV file has no header record")
        self.offsets.append(self.size)

    def _record(self, buf: bytes, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        if end - start > self.max_record_bytes:
            raise RecordError(
                "PayloadRecordTooLarge",
                f"the record at byte {self._carry_start + start} is over {self.max_record_bytes} bytes",
            )
        record = buf[start:end]
        if self.format == "JSONLines" and not record.strip():
            return  # a blank line
        if self.format == "CSV" and record in (b"\n", b"\r\n"):
            return  # an empty line: the csv module skips it too
        if self.format == "CSV" and self.header is None:
            self.header = _header(record)
            return
        if self.count % self.shard_size == 0:
            self.offsets.append(self._carry_start + start)
        self.count += 1
        yield self.count - 1, record


def _header(record: bytes) -> bytes:
    """The header record, checked: one record of distinct, non-empty names."""
    record = record.removeprefix(_BOM)
    try:
        rows = list(csv.reader(io.StringIO(record.decode("utf-8"), newline=""), strict=True))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RecordError("InvalidPayload", f"the CSV header is not a CSV record: {exc}") from None
    if len(rows) != 1:
        raise RecordError(
            "InvalidPayload", r"the CSV header is not one record: are its line ends \r alone? Use \n or \r\n"
        )
    names = rows[0]
    if not all(names) or len(set(names)) != len(names):
        raise RecordError("InvalidPayload", "the CSV header's names must be distinct and non-empty")
    return record if record.endswith(b"\n") else record + b"\n"


def parse(fmt: Format, data: bytes, header: bytes | None = None) -> Iterator[Any]:
    """The records in ``data`` (whole records only, as a shard's byte range holds), parsed."""
    if fmt == "JSONLines":
        for line in data.split(b"\n"):
            if line.strip():
                yield json.loads(line)
        return
    if header is None:
        raise ValueError("a CSV shard needs its file's header")
    text = (header + data).decode("utf-8")
    for row in csv.DictReader(io.StringIO(text, newline=""), strict=True):
        if None in row or None in row.values():
            raise ValueError(f"a CSV record has {'more' if None in row else 'fewer'} fields than the header")
        yield row


def parse_one(fmt: Format, record: bytes, header: bytes | None = None) -> Any:
    """One record, as ``parse`` would give it."""
    found = list(parse(fmt, record, header))
    if len(found) != 1:
        raise ValueError(f"expected one record, found {len(found)}")
    return found[0]
