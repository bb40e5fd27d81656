"""The exceptions the library raises for bad input; scripts turn them into one line on stderr."""

from __future__ import annotations

import errno


class OIDInputError(ValueError):
    """Bad user input: names the file, the row (1-based line in the file, header included) and the value."""

    def __init__(self, message: str, path: str | None = None, row: int | None = None):
        self.path = path
        self.row = row
        where = ""
        if path is not None:
            where = f"{path}, row {row}: " if row is not None else f"{path}: "
        super().__init__(where + message)


class DiskFullError(OIDInputError):
    """The disk (or the user's quota) filled up while an output was being written: names that output, whose
    unfinished file is removed."""

    def __init__(self, path: str):
        super().__init__("no space left on the device; the unfinished file was removed (free some space and run "
                         "again)", path)


def is_disk_full(exc: BaseException) -> bool:
    """A write that failed for lack of space (ENOSPC, or EDQUOT: the user's quota)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
