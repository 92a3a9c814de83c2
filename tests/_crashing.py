"""A checkpointer that simulates a crash: it saves, then raises `Crash` at save number `crash_at_save`."""

from __future__ import annotations

from learndyn.checkpoint import MemoryCheckpointer


class Crash(Exception):
    pass


class CrashingCheckpointer(MemoryCheckpointer):
    def __init__(self, crash_at_save: int, every: int) -> None:
        super().__init__(every=every)
        self.saves, self.crash_at_save = 0, crash_at_save

    def save(self, key, state):
        super().save(key, state)
        self.saves += 1
        if self.saves == self.crash_at_save:
            raise Crash
