"""``python -m bench.sync``: sync a generated tree to hosts that share no disk.

The tree: about 50 MB in 2,000 files, a few large (4 x 8 MiB) and many small (1 to 18 KiB),
random bytes (nothing compresses). On a test cluster with ``shared_disk=False``, for
each host count, each contender copies it to every host three ways, every case ``--repeat``
times from a clean start (median wall time):

    first      nothing on the hosts yet (the launcher also starts with no hash cache)
    no change  the same tree again
    one file   after one small file changed

Contenders: ``launcher sync`` (the CLI, process start included), ``rsync -a --delete``
per host in parallel (``xargs -P``), ``scp -r`` per host in parallel, and, for the
transport choice, a bare asyncssh SFTP upload of the tree (``sftp.put(recurse=True)``,
all hosts at once, first sync only: it has no manifest). Then the cost of ``launch --sync``
with nothing changed against a plain launch (``--runner exec --wait true``).

Needs root (the test cluster), rsync and scp. Results: ``bench/results/sync.json``.
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
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from cluster import Cluster, start_cluster  # noqa: E402

LARGE = (4, 8 << 20)
SMALL = 1996
CASES = ("first", "no change", "one file")


def make_tree(root: Path, seed: int = 9) -> Path:
    rng = random.Random(seed)
    for i in range(LARGE[0]):
        (root / "weights").mkdir(parents=True, exist_ok=True)
        (root / "weights" / f"part{i}.bin").write_bytes(os.urandom(LARGE[1]))
    for i in range(SMALL):
        path = root / f"pkg{i % 40}" / f"sub{i % 7}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(rng.randint(1 << 10, 18 << 10)))
    return root


def clear_hosts(cluster: Cluster, count: int, dest: Path) -> None:
    for host in cluster.hosts[:count]:
        host.run(["sh", "-c", f'rm -rf "{dest}" "{cluster.node_state_dir}/launcher/sync"; mkdir -p "{dest}"'])


def run(argv: list[str], cluster: Cluster, cwd: Path | None = None, stdin: str | None = None) -> float:
    start = time.perf_counter()
    result = subprocess.run(
        argv, cwd=cwd, env=cluster.env(), input=stdin, capture_output=True, text=True, timeout=600, check=False
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{argv[:4]} failed: {result.stderr.strip()[-500:]}")
    return elapsed


def contenders(cluster: Cluster, src: Path, dest: Path, hosts: list[str]) -> dict[str, Callable[[], float]]:
    names = "".join(h + "\n" for h in hosts)
    hosts_file = str(cluster.write_hosts_file(hosts, name="bench-sync-hosts"))
    ssh = f"ssh -F {cluster.ssh_config}"
    parallel = ["xargs", "-P", str(len(hosts)), "-I{}"]
    return {
        "launcher sync": lambda: run(
            [sys.executable, "-m", "launcher", "sync", "--hosts", hosts_file, "--remote-dir", str(dest), str(src)],
            cluster,
        ),
        "rsync -a (xargs -P)": lambda: run(
            [*parallel, "rsync", "-a", "--delete", "-e", ssh, f"{src}/", f"{{}}:{dest}/"], cluster, stdin=names
        ),
        "scp -r (xargs -P)": lambda: run(
            [*parallel, "scp", "-F", str(cluster.ssh_config), "-q", "-r", "-p", f"{src}/.", f"{{}}:{dest}/"],
            cluster,
            stdin=names,
        ),
    }


def sftp_upload(cluster: Cluster, src: Path, dest: Path, hosts: list[str]) -> float:
    """The bare transport: asyncssh SFTP, all hosts at once, as a launcher would pipeline it."""
    import asyncssh

    ssh_dir = cluster.home / ".ssh"
    addresses = {h.name: h.address for h in cluster.hosts}

    async def one(host: str) -> None:
        async with (
            asyncssh.connect(
                addresses[host],
                username="root",
                known_hosts=str(ssh_dir / "known_hosts"),
                client_keys=[str(ssh_dir / "id_ed25519")],
                config=None,
            ) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.put(str(src) + "/", str(dest), recurse=True, preserve=True, max_requests=128)

    async def every() -> None:
        await asyncio.gather(*(one(h) for h in hosts))

    start = time.perf_counter()
    asyncio.run(every())
    return time.perf_counter() - start


def measure(cluster: Cluster, src: Path, count: int, repeat: int) -> dict[str, dict[str, float]]:
    """Median wall seconds per contender and case; the contenders take turns in each
    repetition, so that a busy moment of the machine falls on all of them alike."""
    dest = cluster.project_dir / "dest"
    hosts = [h.name for h in cluster.hosts[:count]]
    changed = next((src / "pkg3").rglob("*.py"))
    syncs = contenders(cluster, src, dest, hosts)
    samples: dict[str, dict[str, list[float]]] = {name: {case: [] for case in CASES} for name in syncs}
    sftp: list[float] = []
    for _ in range(repeat):
        for name, sync in syncs.items():
            clear_hosts(cluster, count, dest)
            shutil.rmtree(cluster.launcher_state_dir / "launcher" / "sync-cache", ignore_errors=True)
            samples[name]["first"].append(sync())
            samples[name]["no change"].append(sync())
            changed.write_bytes(os.urandom(4096))
            samples[name]["one file"].append(sync())
        clear_hosts(cluster, count, dest)
        sftp.append(sftp_upload(cluster, src, dest, hosts))
    table = {name: {case: statistics.median(v) for case, v in cases.items()} for name, cases in samples.items()}
    table["asyncssh sftp put (transport only)"] = {"first": statistics.median(sftp)}
    clear_hosts(cluster, count, dest)
    return table


def launch_overhead(cluster: Cluster, src: Path, count: int, repeat: int) -> dict[str, float]:
    """``launch --sync`` with nothing changed against the same launch without it."""
    hosts_file = str(cluster.write_hosts_file([h.name for h in cluster.hosts[:count]], name="bench-sync-hosts"))
    base = [sys.executable, "-m", "launcher", "launch", "--hosts", hosts_file, "--runner", "exec", "--wait"]
    for host in cluster.hosts[:count]:  # the plain launch needs the directory there
        host.run(["mkdir", "-p", str(src)])
    run([*base, "--sync", "true"], cluster, cwd=src)  # the tree is there from now on
    plain: list[float] = []
    synced: list[float] = []
    for _ in range(repeat):  # in turns, as the syncs
        plain.append(run([*base, "true"], cluster, cwd=src))
        synced.append(run([*base, "--sync", "true"], cluster, cwd=src))
    with_sync, without = statistics.median(synced), statistics.median(plain)
    return {"launch": without, "launch --sync (no change)": with_sync, "added": with_sync / without - 1}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sync", description=__doc__)
    parser.add_argument("--sizes", default="1,4", help="host counts (default 1,4; 8 and 16 on a quiet machine)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sync.json")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, object] = {"sizes": sizes, "repeat": args.repeat, "by_hosts": {}}
    with (
        tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp,
        start_cluster(max(sizes), Path(tmp) / "cluster", shared_disk=False) as cluster,
    ):
        src = make_tree(cluster.project_dir / "tree")
        files = sum(1 for p in src.rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        results["tree"] = {"files": files, "bytes": size}
        print(f"tree: {files} files, {size / 1e6:.1f} MB")
        for count in sizes:
            table = measure(cluster, src, count, args.repeat)
            table["launch"] = launch_overhead(cluster, src, count, args.repeat)
            results["by_hosts"][str(count)] = table  # type: ignore[index]
            print_table(count, table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    return 0


def print_table(count: int, table: dict[str, dict[str, float]]) -> None:
    print(f"\n{count} host(s)            " + "".join(f"{case:>12}" for case in CASES))
    for name, row in table.items():
        if name == "launch":
            continue
        print(f"{name:<36}" + "".join(f"{row[c]:>11.2f}s" if c in row else f"{'':>12}" for c in CASES))
    launch = table["launch"]
    print(
        f"launch {launch['launch']:.2f}s, launch --sync (no change) {launch['launch --sync (no change)']:.2f}s:"
        f" +{launch['added'] * 100:.0f}%"
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
