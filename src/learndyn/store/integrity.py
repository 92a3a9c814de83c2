"""The store checks itself before a write is acknowledged: a damaged file is refused, never written to.

A truncated store file, or one with a flipped byte, may still open and accept a write; the damage shows only
when a query reads the damaged block (DuckDB checks each block's checksum as it reads it). So before each
write transaction, under the exclusive lock:

1. **cheap check** (every transaction, ~0.1 ms): the store file is exactly as the last learndyn write left it.
   After each successful write the store records a *seal* in its lock file (see
   :func:`learndyn.store.lock.write_payload`): the database file's device, inode, size, modification and
   change times (ns), its 12 KiB of headers (hashed) and the state of its write-ahead log. Only a write by
   something else changes them: a truncation, a byte overwritten (``dd``), a crash mid-write, another
   program, a lost lock file.
2. **full check** (only when the seal does not match, and on the first write to a store without one): every
   column of every table is read (``bit_xor(hash(...))``), so DuckDB verifies the checksum of every block
   that holds data (free blocks hold none); a truncated file fails to read its missing blocks. It costs a
   scan of the file (~0.15 s for 3 million metric rows, 29 MB). A damaged store is refused with one line.

Reads need no check: a query that reads a damaged block fails with DuckDB's checksum error, which the store
reports in one line.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

import duckdb

from learndyn.store.errors import StoreError, first_line
from learndyn.store.lock import read_payload, write_payload

if TYPE_CHECKING:
    from learndyn.store.connection import StoreConnections

_SEAL = b"learndyn-seal-1 "
_HEADERS = 3 * 4096  # DuckDB's main header and its two database headers


def fingerprint(store: StoreConnections) -> bytes | None:
    """What the seal records of the store file now (None if it cannot be read)."""
    try:
        st = os.stat(store.path)
        with open(store.path, "rb") as fh:
            headers = hashlib.blake2b(fh.read(_HEADERS), digest_size=16).hexdigest()
    except OSError:
        return None
    wal = store.path.with_name(store.path.name + ".wal")
    try:
        ws = os.stat(wal)
        wal_state = f"{ws.st_size}:{ws.st_mtime_ns}:{ws.st_ctime_ns}"
    except FileNotFoundError:
        wal_state = "-"
    except OSError:
        return None
    fields = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, headers, wal_state)
    return _SEAL + " ".join(map(str, fields)).encode()


def sealed(store: StoreConnections) -> bool:
    """Whether the store file is exactly as the last sealed write left it (the cheap check).

    Call it holding the store's exclusive lock and before opening a DuckDB connection: it opens and closes the
    file, which would drop the POSIX lock a DuckDB connection of this process holds on it.
    """
    now = fingerprint(store)
    return now is not None and read_payload(store._lock_path, len(now) + 1) == now


def seal(store: StoreConnections) -> None:
    """Record the store file's fingerprint after a successful write, once DuckDB has closed the file (best
    effort: without a seal the next write runs the full check)."""
    now = fingerprint(store)
    write_payload(store._lock_path, now if now is not None else b"")


def unseal(store: StoreConnections) -> None:
    """Forget the seal (a write failed midway): the next write checks the whole file."""
    write_payload(store._lock_path, b"")


def verify(store: StoreConnections, con: duckdb.DuckDBPyConnection) -> None:
    """The full check: read every column of every table; a damaged store raises a one-line StoreError."""
    try:
        tables = con.execute(
            "SELECT table_name, list(column_name ORDER BY ordinal_position) FROM information_schema.columns "
            "WHERE table_schema = 'main' GROUP BY table_name"
        ).fetchall()
        for table, columns in tables:
            quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
            con.execute(f'SELECT count(*), bit_xor(hash({quoted})) FROM "{table}"').fetchall()
    except duckdb.Error as exc:
        raise StoreError(
            f"run store {store.path} is damaged ({first_line(exc)}); refusing to write to it "
            "(restore it from a backup, or copy what is still readable into a new store)"
        ) from None
