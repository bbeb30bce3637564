"""Writes ``docs/benchmarks.md`` from a run's results (and ``bench/analysis.md``, by hand)."""

from __future__ import annotations

from pathlib import Path

from bench.render import markdown_table, markdown_targets
from bench.report import all_tables
from bench.results import Results
from bench.targets import check_targets

ANALYSIS = Path(__file__).with_name("analysis.md")

HOW_TO_RUN = """\
Needs root (the test cluster is network namespaces with their own sshd), `tmux`, `sshd`,
`pdsh` (all installed by `.ci/setup`) and matplotlib for the plot (`pip install -e '.[bench]'`).

```
sudo python -m bench                                     # 1 to 32 hosts, 5 repetitions
sudo python -m bench --max-hosts 32 --repeat 3           # what produced the numbers below
sudo python -m bench --quick --no-docs --out "$(mktemp -d)"  # smoke test, < 3 min (CI)
python -m bench --from-json bench/results/full.json      # redraw this page from raw numbers
```

`--out DIR` (default `bench/results`) receives the raw numbers: `full.json`, or `quick.json`
for `--quick`. Unless `--no-docs`, the run rewrites this page and `docs/launch_time.png`.
The exit status is 1 when any run failed (a missed target does not count), so that the
smoke test notices a broken contender.
The benchmark is not part of the test suite; `--quick` (2 hosts, one repetition)
runs in CI so that it cannot rot. Quiet the machine first: the hosts share its cores with
everything else, and the runner records the load average at the start of each host count.
"""

METHOD = """\
Every host count gets a fresh cluster from `tests/cluster.py`: hosts `h0..h{N-1}` are sshd
servers in their own network, UTS, PID and mount namespaces on this machine, sharing its
filesystem (except `/tmp`) and its cores. All contenders run side by side in the same run,
on the same hosts, with the same job, in a rotating order; tables give the median and the
min-max over the repetitions.

* **launcher**: `python -m launcher launch --hosts FILE --name JOB --runner python SCRIPT`
  (light job) or `--nproc-per-node 1` (torchrun job).
* **xargs**: the hand-rolled recipe, one host after another:
  `xargs -a FILE -I{} ssh {} tmux new-session -d -s JOB -c REPO 'OMP_NUM_THREADS=1 exec CMD > OUT 2>&1'`,
  where CMD is `python -u SCRIPT` or `python -m torch.distributed.run --nnodes N --nproc-per-node 1
  --rdzv-backend c10d --rdzv-endpoint <h0's address>:<fixed port> --rdzv-id JOB SCRIPT`.
* **xargs -P 32**: the same, 32 hosts at a time.
* **pdsh**: `pdsh -S -R ssh -f 32 -w h0,h1,... <the same tmux command>`.
* **floor**: `python -m bench.floor h0 h1 ...`: asyncssh connects to every host at once and
  runs `true`; interpreter start and `import asyncssh` included, as for the launcher.

Launch time is the wall time of the command. Every contender returns once each host has
accepted the job's tmux session; the launcher returns later, once each host's supervisor
has started the job's command. Afterwards, untimed, the runner checks that the job's own
process (not the pane's shell) runs on every host. CPU s/host is the launching side's: user
+ system time of the command and every process it waited for (`wait4`), per host. Node CPU
s/host is what the hosts used by the time the command returned: each host's sshd reaps the
SSH sessions and the orphaned tmux server, so their time adds up in its children's time.
Between runs the runner ends everything on the hosts but their sshd (SIGTERM, then SIGKILL)
and checks that nothing is left, so no run slows the next; the contenders' own kill is
measured separately. The torchrun job is launched once per host count from 16 hosts on
(see repetitions), because each start costs every host two torch imports.

Every SSH login on these hosts runs root's `~/.bashrc`, which runs `pyenv init` and `pyenv
rehash` (about 0.08 s of CPU, under a lock in `~/.pyenv`, which all hosts share): every
contender, the floor included, pays it once per host and SSH session, and so does each tmux
pane that starts a job through a shell (tmux passes SSH_CLIENT on, and Debian's bash then
reads `~/.bashrc`). A shell killed while it holds that lock leaves it behind and every later
login waits 60 s; the runner never kills a shell, and if something else leaves the lock it
removes it and marks the runs it slowed as failed (`bench/hygiene.py`).

Time to all ranks ready runs `examples/distributed_sum.py` and stops the clock when every
host's output holds its rank's `... ok` line, polled every 50 ms in the output files on the
shared filesystem (the recipes redirect their output there; the launcher's node agents
write it there); a final `launcher logs JOB` checks that the launcher shows every line.
Kill starts `bench/jobs/dist_sleep.py --helper` (every rank also leaves a helper process
in a session of its own, as a daemonising data or logging service does), waits until every
rank has passed its all-reduce, runs the kill, and polls every host's PID namespace every
50 ms until no job process is left. Logs runs `bench/jobs/ticker.py` (each host prints a
timestamped line 100 times a second) and follows it with `launcher logs --follow`.
"""


def write_docs(results: Results, path: Path, plot: str | None) -> None:
    machine = results.machine
    versions = machine.get("versions", {})
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench`: edit bench/docs.py or bench/analysis.md, not this file. -->",
        "",
        "Launch, time to all ranks ready, kill and logs of `launcher`, measured against the",
        "hand-rolled `xargs ... ssh ... tmux` recipe, pdsh and the raw SSH floor on 1 to 32 hosts",
        "(issue 5). Run "
        + ("**in quick mode** (smoke test, 1 repetition: not numbers to quote) " if results.config.get("quick") else "")
        + f"on {machine.get('date', '?')}, launcher at `{machine.get('launcher_commit', '?')}`.",
        "",
        "## How to run",
        "",
        HOW_TO_RUN,
        "## The machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine.get('cpu')}, {machine.get('cores')} cores |",
        f"| memory | {machine.get('memory_gb')} GB |",
        f"| OS | {machine.get('os')}, Linux {machine.get('kernel')} |",
        f"| Python | {machine.get('python')} |",
        "| versions | " + ", ".join(f"{k} {v}" for k, v in versions.items()) + " |",
        f"| load average at start | {_load(machine.get('load_at_start'))} |",
        f"| repetitions | {_repetitions(results)} |",
        "",
        "## How it is measured",
        "",
        METHOD,
        "## Targets",
        "",
        markdown_targets(check_targets(results)),
        "## Results",
        "",
    ]
    if plot:
        parts += [f"![Launch time against host count]({plot})", ""]
    parts += [markdown_table(t) for t in all_tables(results)]
    if ANALYSIS.exists():
        parts += ["## Analysis", "", ANALYSIS.read_text()]
    if results.notes:
        parts += ["## Notes from the run", ""] + [f"* {note}" for note in results.notes] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))


def _load(load: object) -> str:
    return ", ".join(f"{x:.2f}" for x in load) + " (1, 5, 15 min)" if isinstance(load, list | tuple) else "?"


def _repetitions(results: Results) -> str:
    c = results.config
    return (
        f"launch {c.get('repeat')} (torchrun job from 16 hosts on: {c.get('heavy_repeat')}), "
        f"time to ready and kill {c.get('heavy_repeat')}, logs 1, start-up {2 * int(c.get('repeat', 1))}"
    )
