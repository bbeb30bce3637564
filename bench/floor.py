"""The floor: connect to every host at once with asyncssh and run ``true``; nothing else.

    HOME=<cluster home> python -m bench.floor h0 h1 ...

Like the launcher, it reads ~/.ssh/config, known_hosts and the key from HOME, pays for
its own interpreter start and ``import asyncssh``, and exits non-zero if any host failed.
"""

from __future__ import annotations

import asyncio
import sys

import asyncssh


async def run_true(host: str) -> int:
    async with asyncssh.connect(host, connect_timeout=30) as conn:
        result = await conn.run("true", timeout=60)
        return result.exit_status or 0


async def main(hosts: list[str]) -> int:
    statuses = await asyncio.gather(*(run_true(h) for h in hosts), return_exceptions=True)
    failed = [(h, s) for h, s in zip(hosts, statuses, strict=True) if s != 0]
    for host, status in failed:
        print(f"floor: {host}: {status}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
