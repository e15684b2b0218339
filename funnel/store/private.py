"""Files that hold people's data, created readable by their owner only (mode 0600).

The database (and, without FUNNEL_SECRET_KEY, the key that signs every unsubscribe
link), its backups, the outbox's emails and previews for a real person are nobody
else's business on a shared machine. The mode is set explicitly, not left to the umask:
`os.open(..., 0o600)` only ever loses bits to a umask, and `fchmod` then makes it
exactly 0600. Files that already exist keep their mode when read or backed up into;
a file rewritten here is made 0600 again.
"""

from __future__ import annotations

import os
from pathlib import Path

#: owner may read and write; nobody else anything
PRIVATE = 0o600
#: a folder made for such files: owner only
PRIVATE_DIR = 0o700


def create_private_file(path: Path) -> bool:
    """Create `path` empty with mode 0600 if it does not exist; True when this call made it.

    Two processes racing to make it are both fine: one creates it, the other
    finds it there (O_EXCL), and neither truncates anything.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE)
    finally:
        os.close(fd)
    return True


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` (created or truncated), leaving it mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    try:
        os.fchmod(fd, PRIVATE)
        with os.fdopen(fd, "wb", closefd=False) as handle:
            handle.write(data)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Make the folder `path` (and missing parents) if it does not exist; a new one is 0700.

    The parents made on the way get the usual mode; an existing folder is
    left as its owner set it.
    """
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        return
    os.chmod(path, PRIVATE_DIR)
