"""The floor: connect to every host at once with asyncssh and run ``true``; nothing else.

    HOME=<cluster home> python -m bench.floor h0 h1 ...

Like the launcher, it reads ~/.ssh/config, known_hosts and the key from HOME, pays for
its own interpreter start and ``import asyncssh``, and exits non-zero if any host failed.
"""

from __future__ import annotations

import asyncio
import sys

import asyncssh

PATIENCE_S = 600.0
"""As long as the launcher waits for a live host (``SshOptions.patience``): the floor is the
time the fan-out takes, not whether a timeout chosen for a quiet machine holds (with 30 s,
half of 128 hosts sharing 2 cores failed their handshake)."""


async def run_true(host: str) -> int:
    async with asyncssh.connect(host, connect_timeout=PATIENCE_S) as conn:
        result = await conn.run("true", timeout=PATIENCE_S)
        return result.exit_status or 0


async def main(hosts: list[str]) -> int:
    statuses = await asyncio.gather(*(run_true(h) for h in hosts), return_exceptions=True)
    failed = [(h, s) for h, s in zip(hosts, statuses, strict=True) if s != 0]
    for host, status in failed:
        print(f"floor: {host}: {status!r}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
