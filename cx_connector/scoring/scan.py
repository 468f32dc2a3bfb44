"""Touchpoint rows into numpy columns, in this process or in a helper process.

:func:`fetch_columns` turns the rows of the scoring scan (see
:func:`cx_connector.scoring.features.load`) into numpy columns. A full pass over a
large SQLite table reads half of it in a helper process (:class:`Helper`, this
module's :func:`main`) while this process reads the other half:
fetching a million rows is mostly Python work on one core (one object per column
per row), and the machine has two. The helper imports only numpy and sqlite3, so it
starts in a fraction of a second; it gets its request (database file, statement,
parameters) as JSON on stdin and answers on stdout with :func:`encode`'s format
(a JSON header with the text columns, then the numeric arrays' raw bytes: no
pickle, nothing executable crosses the pipe). It reads in its
own transaction, which may see touchpoints committed after the caller's: harmless,
as those customers' ``changed_at`` moves past the watermark the run stores, so they
are scored again by the next run. When the helper cannot run or fails, the caller
reads the range itself (slower, same result).
"""

from __future__ import annotations

import itertools
import json
import resource
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: the row of a scan: customer id and code, time, value (a rating's score), rating
#: scale, reference, line items, source
COLUMNS = 7
#: bits of the code in the first column (customer_id * 2**CODE_BITS + code); the
#: kind is ``code >> 4``
CODE_BITS = 9
#: rows fetched (and converted) at a time
FETCH = 50_000
NAMES = ("cust", "code", "days", "value", "scale", "ref", "items", "source")
OBJECT_COLUMNS = ("ref", "items", "source")
#: how long the caller waits for a helper before reading its range itself
HELPER_TIMEOUT_S = 1800.0


def days_of(values: np.ndarray, sqlite: bool) -> np.ndarray:
    """Days since 1970-01-01 (float) of the scan's time column: SQLite's stored text
    (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC) or PostgreSQL's epoch seconds."""
    if not len(values):
        return np.zeros(0)
    if sqlite:
        stamps = values.astype("datetime64[us]")
        missing = np.isnat(stamps)
        out = np.where(missing, 0, stamps.astype(np.int64)) / 86_400e6
        out[missing] = np.nan
        return out
    return values.astype(float) / 86400.0


def fetch_columns(cur: Any, statements: list[str], params: Any, *, sqlite: bool,
                  event_kinds: int) -> dict[str, np.ndarray]:
    """Run ``statements`` on the DBAPI cursor ``cur`` and return the scan's columns.

    Rows are fetched in batches of :data:`FETCH` and converted batch by batch (one
    object array per batch, filled by ``np.fromiter``, four times cheaper than
    ``np.array`` on tuples), so a million rows never sit in memory as tuples. The
    object columns (reference, items, source) are kept only for event rows (kind
    below ``event_kinds``).
    """
    parts: dict[str, list] = {k: [] for k in NAMES}
    for statement in statements:
        cur.execute(statement, params)
        while batch := cur.fetchmany(FETCH):
            rows = np.fromiter(itertools.chain.from_iterable(batch), dtype=object,
                               count=len(batch) * COLUMNS).reshape(len(batch), COLUMNS)
            del batch
            packed = rows[:, 0].astype(np.int64)
            code = packed & ((1 << CODE_BITS) - 1)
            parts["cust"].append(packed >> CODE_BITS)
            parts["code"].append(code)
            parts["days"].append(days_of(rows[:, 1], sqlite))
            numbers = rows[:, 2:4].astype(float)
            parts["value"].append(numbers[:, 0])
            parts["scale"].append(numbers[:, 1])
            event = (code >> 4) < event_kinds
            for k, column in (("ref", 4), ("items", 5), ("source", 6)):
                parts[k].append(rows[event, column])
    return {k: _concat(k, chunks) for k, chunks in parts.items()}


def _concat(name: str, chunks: list[np.ndarray]) -> np.ndarray:
    if chunks:
        return np.concatenate(chunks)
    return np.zeros(0, dtype=object if name in OBJECT_COLUMNS else np.int64 if name in ("cust", "code")
                    else float)


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Columns of consecutive ranges, in order."""
    return {k: np.concatenate([p[k] for p in parts]) for k in NAMES}


def encode(columns: dict[str, np.ndarray], **extra: Any) -> bytes:
    """Columns as bytes: an 8-byte header length, a JSON header (the object columns as
    lists, each numeric array's dtype and length, ``extra``), then the numeric arrays'
    bytes in header order."""
    numeric = {k: v for k, v in columns.items() if k not in OBJECT_COLUMNS}
    header = json.dumps({"objects": {k: columns[k].tolist() for k in OBJECT_COLUMNS},
                         "numeric": [[k, v.dtype.str, len(v)] for k, v in numeric.items()],
                         **extra}).encode()
    return b"".join([struct.pack("<Q", len(header)), header,
                     *(np.ascontiguousarray(v).tobytes() for v in numeric.values())])


def decode(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The columns and the extra header fields of :func:`encode`'s bytes."""
    (size,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + size])
    columns: dict[str, np.ndarray] = {}
    for k, values in header.pop("objects").items():
        column = np.empty(len(values), dtype=object)
        column[:] = values
        columns[k] = column
    offset = 8 + size
    for k, dtype, n in header.pop("numeric"):
        columns[k] = np.frombuffer(data, dtype=np.dtype(dtype), count=n, offset=offset).copy()
        offset += columns[k].nbytes
    if offset != len(data):
        raise ValueError(f"{len(data) - offset} bytes left over")
    return columns, header


def peak_mib() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class HelperFailed(Exception):
    """The helper process did not deliver its columns (the caller reads the range itself)."""


class Helper:
    """One range of a SQLite scan, read in a helper process.

    ``Helper(path, statement, params, event_kinds)`` starts it; :meth:`result`
    waits for the columns (raises :class:`HelperFailed`). :attr:`stats` tells how
    long it took and its peak memory.
    """

    #: the command that runs the helper (tests replace it): this interpreter, isolated
    #: (``-I``: neither the working directory nor PYTHON* variables can put other code
    #: first), importing this very copy of the package
    command: tuple[str, ...] = (
        sys.executable, "-I", "-c",
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r}); "
        "from cx_connector.scoring.scan import main; main()")

    def __init__(self, path: str, statement: str, params: dict[str, Any], event_kinds: int) -> None:
        self.stats: dict[str, float] = {}
        self.started = time.perf_counter()
        request = json.dumps({"path": path, "statement": statement, "params": params,
                              "event_kinds": event_kinds}).encode()
        try:
            self.proc: subprocess.Popen | None = subprocess.Popen(  # noqa: S603 - this interpreter, our module
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            stdin, self.proc.stdin = self.proc.stdin, None  # sent now; communicate() only reads
            assert stdin is not None
            stdin.write(request)
            stdin.close()
        except OSError as exc:  # cannot start a process here: the caller reads the range itself
            self.proc, self.error = None, f"could not start: {exc}"

    def stop(self) -> None:
        """Kill the helper if it is still running (the caller gave up on it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.communicate()

    def result(self) -> dict[str, np.ndarray]:
        if self.proc is None:
            raise HelperFailed(self.error)
        try:
            out, err = self.proc.communicate(timeout=HELPER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise HelperFailed(f"no answer within {HELPER_TIMEOUT_S:.0f} s") from None
        if self.proc.returncode != 0:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise HelperFailed(f"exit code {self.proc.returncode}: {tail[0]}")
        try:
            columns, extra = decode(out)
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise HelperFailed(f"unreadable answer: {exc}") from None
        if set(columns) != set(NAMES):
            raise HelperFailed(f"unexpected columns: {sorted(columns)}")
        self.stats = {"seconds": round(time.perf_counter() - self.started, 3), "peak_mib": extra["peak_mib"]}
        return columns


def main() -> None:
    """The helper: a JSON request on stdin, :func:`encode`'s bytes on stdout."""
    request = json.loads(sys.stdin.buffer.read())
    conn = sqlite3.connect(request["path"], timeout=30)
    try:
        conn.execute("PRAGMA query_only = ON")
        cur = conn.cursor()
        columns = fetch_columns(cur, [request["statement"]], request["params"], sqlite=True,
                                event_kinds=request["event_kinds"])
    finally:
        conn.close()
    sys.stdout.buffer.write(encode(columns, peak_mib=round(peak_mib(), 1)))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
