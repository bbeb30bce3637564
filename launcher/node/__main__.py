"""``python -P -m launcher.node serve``: the node agent (``-P``: a ``launcher`` directory in
the login directory must not shadow the package)."""

from __future__ import annotations

import signal
import sys

from launcher.node.agent import serve


def main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        # A dropped connection must end a follow quietly, not with a traceback.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        serve(sys.stdin, sys.stdout)
        return 0
    print("usage: python -m launcher.node serve", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
