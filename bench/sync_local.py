"""``python -m bench.sync_local``: the launching side's cost of a first sync to local agents.

The tree: about 50 MB (4 x 8 MiB and 1,996 files of 1 to 18 KiB, random bytes), synced
to 1 and to 3 local agents (``tests/local_node.py``: real agents, no SSH), each into its
own empty directory. For each version of the code named (a commit, or ``.`` for the
working tree), a child process runs the syncs ``--repeat`` times with that version's
``launcher`` and reports the median wall time and the median CPU seconds of the launching
process alone (the agents are other processes), and how many ``SyncPut`` requests an agent
held on average when it answered one (1: one at a time). Needs no root; prints a table.

    python -m bench.sync_local --versions 1269e4e^ 1269e4e .
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HOSTS = (1, 3)


def make_tree(root: Path, seed: int = 9) -> Path:
    rng = random.Random(seed)
    (root / "weights").mkdir(parents=True)
    for i in range(4):
        (root / "weights" / f"part{i}.bin").write_bytes(rng.randbytes(8 << 20))
    for i in range(1996):
        path = root / f"pkg{i % 40}" / f"sub{i % 7}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(1 << 10, 18 << 10)))
    return root


def count_in_flight() -> list[int]:
    """At each ``SyncPut`` answer: how many its agent had been sent and not answered yet (1:
    one at a time). Counted around ``NodeAgent``'s own send and receive, in every version."""
    from launcher.transport.agent import NodeAgent

    seen: list[int] = []
    puts: dict[int, int] = {}
    send, receive = NodeAgent._send, NodeAgent._receive

    async def counted_send(self: NodeAgent, request: Any) -> None:
        if request.op == "sync_put":
            puts[id(self)] = puts.get(id(self), 0) + 1
        await send(self, request)

    async def counted_receive(self: NodeAgent) -> dict[str, Any]:
        message = await receive(self)
        if "staged" in message:
            seen.append(puts[id(self)])
            puts[id(self)] -= 1
        return message

    NodeAgent._send = counted_send  # type: ignore[method-assign]
    NodeAgent._receive = counted_receive  # type: ignore[method-assign]
    return seen


def child(source: Path, repeat: int) -> dict[str, object]:
    """Median (wall, cpu) seconds of a first sync, by host count, with the ``launcher`` on sys.path."""
    sys.path.insert(0, str(REPO / "tests"))
    from local_node import LocalNode

    import launcher
    from launcher.sync.run import sync_agents
    from launcher.sync.tree import scan_tree

    tree = scan_tree(str(source))  # hashed here, before the clock starts
    in_flight = count_in_flight()
    results: dict[str, object] = {"launcher": launcher.__file__}
    for count in HOSTS:
        walls, cpus = [], []
        for _ in range(repeat):
            nodes = [LocalNode.create() for _ in range(count)]
            dests = Path(tempfile.mkdtemp(prefix="sync-bench-"))
            try:

                async def one(nodes: list[LocalNode], dests: Path) -> tuple[float, float]:
                    agents = []
                    try:
                        for node in nodes:
                            with node.environment():
                                agents.append(await node.open())
                        targets = [(a, str(dests / f"host{i}")) for i, a in enumerate(agents)]
                        wall, cpu = time.perf_counter(), time.process_time()
                        report = await sync_agents(tree, targets)
                        assert report.same_everywhere
                        return time.perf_counter() - wall, time.process_time() - cpu
                    finally:
                        await asyncio.gather(*(a.close() for a in agents))

                wall, cpu = asyncio.run(one(nodes, dests))
            finally:
                for node in nodes:
                    node.close()
                shutil.rmtree(dests, ignore_errors=True)
            walls.append(wall)
            cpus.append(cpu)
        results[str(count)] = (statistics.median(walls), statistics.median(cpus))
    results["in flight"] = statistics.mean(in_flight)
    return results


def measure(version: str, source: Path, repeat: int, work: Path) -> dict[str, Any]:
    """The child's results with ``version``'s launcher: ``.`` the working tree, else a commit."""
    path = REPO
    if version != ".":
        path = work / version.replace("/", "_").replace("^", "_parent")
        path.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", version, "launcher"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
    # Run from that tree (``-m`` puts the current directory first): its launcher, this bench.
    env = {**os.environ, "PYTHONPATH": f"{path}{os.pathsep}{REPO}"}
    argv = [sys.executable, "-m", "bench.sync_local", "--child", str(source), "--repeat", str(repeat)]
    done = subprocess.run(argv, cwd=path, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{version}: the measurement failed:\n{done.stderr[-2000:]}")
    results = json.loads(done.stdout.splitlines()[-1])
    if not results.pop("launcher").startswith(str(path)):
        raise SystemExit(f"{version}: the measurement ran another launcher")
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync_local", description=__doc__)
    parser.add_argument("--versions", nargs="+", default=["."], metavar="COMMIT", help="`.`: the working tree")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.repeat)))
        return 0
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as work:
        source = make_tree(Path(work) / "src")
        size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
        print(f"first sync of {size / 1e6:.0f} MB to local agents, median of {args.repeat}")
        head = "".join(f"{f'{n} host(s) wall s':>18}{'cpu s':>8}" for n in HOSTS)
        print(f"{'version':<14}{head}{'SyncPut in flight':>19}")
        for version in args.versions:
            results = measure(version, source, args.repeat, Path(work))
            cells = "".join(f"{results[str(n)][0]:>18.2f}{results[str(n)][1]:>8.2f}" for n in HOSTS)
            print(f"{version:<14}{cells}{results['in flight']:>19.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
