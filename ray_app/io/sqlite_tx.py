"""One SQLite write transaction, shared by the local status store and the local queue."""

from __future__ import annotations


class ImmediateTx:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error): the write lock is taken at
    once, so a condition checked inside and the writes that follow are atomic across
    processes (two drivers never claim one job or receive one message).

    ``close=True`` also closes the connection when the block ends.
    """

    def __init__(self, conn, close: bool = False):
        self.conn = conn
        self.close = close

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        try:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            if self.close:
                self.conn.close()
        return False
