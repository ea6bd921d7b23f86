"""``python -m tokioloop script.py [args...]``: run a script with tokioloop as asyncio's loop.

The script runs as ``__main__`` with ``sys.argv = [script.py, args...]``; ``asyncio.run``,
``asyncio.new_event_loop`` and ``asyncio.get_event_loop`` give tokioloop loops, through the
event-loop policy.
"""

from __future__ import annotations

import runpy
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m tokioloop script.py [args...]", file=sys.stderr)
        return 0 if argv else 2
    from ._policy import _install

    _install()
    sys.argv = argv
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
