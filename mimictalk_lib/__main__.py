"""``python -m mimictalk_lib <command> ...``: the library's command-line entry points.

- ``download``: list, check or fetch the manifest's model files (``mimictalk_lib.download``);
- ``convert``: upstream checkpoint -> model.safetensors + config.json (``mimictalk_lib.convert``).

The end-to-end ``talk`` command is added with the nodes (it runs the pack's graphs).
"""

from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence


def _commands() -> dict[str, Callable[[Optional[Sequence[str]]], int]]:
    from . import convert, download

    return {"download": download.main, "convert": convert.main}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    if not argv or argv[0] not in commands:
        print("usage: python -m mimictalk_lib {" + ",".join(commands) + "} [args...]\n"
              + (__doc__ or ""), file=sys.stderr)
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
