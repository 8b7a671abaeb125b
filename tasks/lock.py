"""
Deprecated name of ``python3 -m tasks.lock_checksums`` (the checksum lock without a deploy); kept so
that ``python3 -m tasks.lock inventory/<cluster>.py`` and ``from tasks.lock import lock_inventory``
go on working.
"""

import sys

from tasks.lock_checksums import lock_inventory, main  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
