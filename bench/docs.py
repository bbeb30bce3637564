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
Two contenders are optional and not installed by `.ci/setup`; a run without them skips them
and says so. Install them into the same interpreter, without letting pip touch torch (check
`python -c 'import torch; print(torch.__version__)'` afterwards):

```
pip install torchrunx                                    # 0.4.0 measured
DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed   # 0.19.8 measured; ops not built
```

```
sudo python -m bench                                     # 1 to 32 hosts, 5 repetitions
sudo python -m bench --max-hosts 32 --repeat 3           # what produced the numbers below
sudo python -m bench --max-hosts 253 --repeat 3          # and 64, 128, 253 hosts: the light job only
sudo python -m bench --sizes 1,4 --only launch,control   # chosen sizes and measurements
sudo python -m bench --quick --no-docs --out "$(mktemp -d)"  # smoke test (CI): < 3 min, ~4 with torchrunx and deepspeed
python -m bench --from-json bench/results/full.json      # redraw this page from raw numbers
```

`--only` takes any of `launch`, `control` (status and kill of the light job), `ready`, `kill`
and `logs`; start-up always runs. Above 32 hosts only the light job is measured (its launch,
status and kill), without torchrunx and deepspeed: torch's start on every host (theirs
import it even for the light job) would keep both cores busy for minutes per run. From 64 hosts on a run may fail (a timeout, a host that does not answer); the tables
count the runs that failed, and a cluster that cannot start is a note, not the end of the run.
`--max-hosts` goes up to 253, as far as `tests/cluster.py`'s `MAX_HOSTS` allows.

`--out DIR` (default `bench/results`) receives the raw numbers: `full.json`, or `quick.json`
for `--quick`. `bench/results/before-ed1abd0.json` holds node CPU of launch, status and kill
at 1 and 4 hosts, 3 repetitions, on `ed1abd0` (before the node agent's refactor), for
comparison: `python -m bench --from-json bench/results/before-ed1abd0.json --no-docs`. Unless `--no-docs`, the run rewrites this page and `docs/launch_time.png`.
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
* **torchrunx** (optional): `python -m bench.jobs.torchrunx_job`, which runs the same jobs,
  written as functions, with `torchrunx.Launcher(hostnames=<addresses>, workers_per_host=1)`.
  It logs into the hosts one after another (fabric), starts an agent on each, and the agent
  spawns the worker. Two things a real cluster's DNS gives it are given by hand: the hosts
  by address (it resolves each name on the launching machine, where `h0` is only an ssh
  alias), and its call-back name (`socket.getfqdn()`) as the launching machine's address on
  the cluster network, with `GLOO_SOCKET_IFNAME` set to that network for its gloo group.
* **deepspeed** (optional): `python -m deepspeed.launcher.runner --hostfile FILE --launcher pdsh
  --no_ssh_check --force_multi --no_local_rank --master_addr <h0> --master_port P SCRIPT`,
  FILE holding `hN slots=1`. Its ssh check runs a plain `ssh HOST`, which reads root's own
  `~/.ssh/config` rather than the cluster's (pdsh gets that from `PDSH_SSH_ARGS_APPEND`);
  `--force_multi` keeps one host on pdsh (it would run on this machine instead).

torchrunx and deepspeed stay in the foreground while the job runs: their launch is timed
until the job's own code runs on every host (the light function has written its first line;
the script's process exists), their launching-side CPU read from the process tree at that
moment, and their kill is Ctrl-C (SIGINT to the command's process group). On Ctrl-C
deepspeed runs `pdsh ... pkill -f <its node command>` on every host; torchrunx runs
`ssh HOST kill <agent pid>`, host by host.

Status and kill of the light job (`control`): the launcher starts the light job, then
`launcher status NAME` and `launcher kill --grace 5 NAME` are timed in turn, each with the
hosts' CPU (node CPU) from just before the command until its SSH sessions have ended (for the
kill: and the job is gone), measured as for a launch. What a sleeping job and its supervisor
use meanwhile is measured over one idle second and given under the table. The torchrun kill
has node CPU too: the kill's own work and the job's processes shutting down.

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
        "Launch, time to all ranks ready, status, kill and logs of `launcher`, measured against",
        f"{_contenders(results)} on {_sizes(results)} hosts",
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


def _contenders(results: Results) -> str:
    measured = {s.contender for s in results.samples}
    names = ["the hand-rolled `xargs ... ssh ... tmux` recipe", "pdsh", "the raw SSH floor"]
    names += [
        name for key, name in (("torchrunx", "torchrunx"), ("deepspeed", "the DeepSpeed launcher")) if key in measured
    ]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _sizes(results: Results) -> str:
    counts = sorted({s.hosts for s in results.samples if s.hosts})
    return f"{counts[0]} to {counts[-1]}" if counts else "no"


def _load(load: object) -> str:
    return ", ".join(f"{x:.2f}" for x in load) + " (1, 5, 15 min)" if isinstance(load, list | tuple) else "?"


def _repetitions(results: Results) -> str:
    c = results.config
    return (
        f"launch {c.get('repeat')} (torchrun job from 16 hosts on: {c.get('heavy_repeat')}), "
        f"time to ready and kill {c.get('heavy_repeat')}, logs 1, start-up {2 * int(c.get('repeat', 1))}"
    )
