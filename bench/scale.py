"""Issue 11's scale check: launch, status, logs and kill of the light job against the raw
asyncssh fan-out (``bench.floor``: connect to every host, run ``true``) at the same N, in
the same run, on one cluster per size:

    python -m bench.scale --sizes 64,128,253 --runs 3 [--json FILE]

Each run measures the floor first, then ``launch --runner python bench/jobs/sleeper.py``,
``status``, ``logs`` and ``kill`` of that job: wall time and the launching side's CPU
(user + system of the command and what it reaped, from ``wait4``). A failure is any
non-zero exit. Targets: 0 failures, wall <= 2 x the floor's, CPU per host <= 1.2 x the
floor's. One size at a time; the machine's other users make the numbers noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import REPO, Run, run_timed

sys.path.insert(0, str(REPO / "tests"))
from cluster import start_cluster  # after the path above

OPERATIONS = ("launch", "status", "logs", "kill")


def measure(size: int, runs: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    with start_cluster(size, Path(tempfile.mkdtemp(prefix="scale-"))) as cluster:
        names = [h.name for h in cluster.hosts]
        hosts = cluster.write_hosts_file(names, name="scale")
        env = cluster.env(NO_COLOR="1")
        python = sys.executable
        for run in range(1, runs + 1):
            job = f"scale-{size}-{run}-{int(time.time())}"
            floor = run_timed([python, "-m", "bench.floor", *names], env, timeout=900)
            commands = {
                "launch": ["launch", "--hosts", str(hosts), "--name", job, "--runner", "python",
                           "bench/jobs/sleeper.py", job],
                "status": ["status", job],
                "logs": ["logs", job],
                "kill": ["kill", "--grace", "2", job],
            }  # fmt: skip
            results = {
                op: run_timed([python, "-m", "launcher", *argv], env, timeout=900) for op, argv in commands.items()
            }
            if not results["kill"].ok:  # leave nothing to the next run
                run_timed([python, "-m", "launcher", "kill", "--grace", "0", job], env, timeout=900)
            for op, result in {"floor": floor, **results}.items():
                rows.append(_row(size, run, op, result, floor))
                print(_line(rows[-1]), flush=True)
    return rows


def _row(size: int, run: int, op: str, result: Run, floor: Run) -> dict[str, object]:
    return {
        "hosts": size,
        "run": run,
        "op": op,
        "ok": result.ok,
        "wall_s": round(result.wall_s, 2),
        "cpu_s": round(result.cpu_s, 2),
        "cpu_ms_per_host": round(1000 * result.cpu_s / size, 1),
        "wall_vs_floor": round(result.wall_s / floor.wall_s, 2),
        "cpu_vs_floor": round(result.cpu_s / floor.cpu_s, 2) if floor.cpu_s else None,
        "problem": None if result.ok else result.problem(),
        # What the command printed: status says there, not on stderr, which hosts did what.
        "output": None if result.ok else _not_running(result.stdout),
    }


def _not_running(stdout: str) -> str:
    """The lines of a status table or a message that are not a host still running."""
    lines = [line for line in stdout.splitlines() if line.strip() and " running " not in f" {line} "]
    return "\n".join(lines[-40:])


def _line(row: dict[str, object]) -> str:
    problem = f"  {row['problem']}\n{row['output']}" if row["problem"] else ""
    return (
        f"{row['hosts']:>4} run {row['run']} {row['op']:<7} {'ok' if row['ok'] else 'FAIL':<4} "
        f"wall {row['wall_s']:>6}s ({row['wall_vs_floor']}x floor)  "
        f"cpu {row['cpu_ms_per_host']:>5} ms/host ({row['cpu_vs_floor']}x floor){problem}"
    )


def summary(rows: list[dict[str, object]]) -> str:
    """One markdown table: per size and operation, failures and the worst of three runs."""
    lines = [
        "| hosts | operation | ok | wall s (median) | worst wall / floor | CPU ms/host (median) | worst CPU / floor |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size in sorted({int(str(r["hosts"])) for r in rows}):
        for op in ("floor", *OPERATIONS):
            mine = [r for r in rows if r["hosts"] == size and r["op"] == op]
            if not mine:
                continue
            ok = sum(1 for r in mine if r["ok"])
            walls = [float(str(r["wall_s"])) for r in mine]
            cpus = [float(str(r["cpu_ms_per_host"])) for r in mine]
            worst_wall = max(float(str(r["wall_vs_floor"])) for r in mine)
            worst_cpu = max(float(str(r["cpu_vs_floor"] or 0)) for r in mine)
            lines.append(
                f"| {size} | {op} | {ok}/{len(mine)} | {statistics.median(walls):.1f} | {worst_wall:.2f} "
                f"| {statistics.median(cpus):.1f} | {worst_cpu:.2f} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64", help="Comma-separated host counts (at most 253).")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="Append every row to this JSON file.")
    args = parser.parse_args()
    rows: list[dict[str, object]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.extend(measure(size, args.runs))
        if args.json:
            old = json.loads(args.json.read_text()) if args.json.exists() else []
            args.json.write_text(json.dumps(old + [r for r in rows if r["hosts"] == size], indent=1))
    print(summary(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
