"""The project's own errors: what a user can cause and fix, each with a message naming the thing and the fix.

Every command (`hpc-ncsn …`, `train.py`, `launch/sweep.py`) prints a `UserError` as one
line, `error: <message>`, and exits with status 2; anything else is a bug in hpc_ncsn
and keeps its traceback (`--debug` shows the traceback of a UserError too). Each
class also derives from the built-in exception its callers would expect
(ConfigError is a ValueError, DiskFull an OSError, ...).

Standard library only.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error the user can fix; str() is the whole one-line message."""
