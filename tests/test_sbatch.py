"""``launcher sbatch``'s batch script (pure), the node task that runs it, and SLURM slots."""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import HostsFileError, SlurmError, UsageError
from launcher.hosts.sources import resolve_hosts
from launcher.job import slurm as slurm_jobs
from launcher.launching.sbatch import SbatchOptions, batch_script, placeholder_hosts
from launcher.launching.spec import make_spec
from launcher.node import slurm_task as node_task
from launcher.node.rundir import RunDir
from launcher.protocol.codec import decode, to_wire
from launcher.protocol.slurm import SlurmTask, TaskCommand, slurm_field

REPO = Path(__file__).resolve().parent.parent
NASTY = ["it's", '"quoted"', "$(touch /tmp/pwned)", "`id`", "a b", "ünïcødé", "semi;colon", "--flag=x"]


def script_for(*args: str, options: SbatchOptions | None = None, **spec_options: object) -> str:
    options = options or SbatchOptions(nodes=3)
    spec = make_spec("train.py", args, hosts=placeholder_hosts(options), cwd="/work/dir", environ={}, **spec_options)  # type: ignore[arg-type]
    return batch_script(spec, "job-1", options)


def task_of(script: str) -> SlurmTask:
    """The JSON argument of the srun line, as the node task receives it."""
    srun = script[script.rindex("\nsrun ") :]
    words = shlex.split(srun.replace("\\\n", " "))
    return decode(SlurmTask, json.loads(words[-1]))


def test_sbatch_lines_ask_for_what_the_options_say() -> None:
    options = SbatchOptions(
        nodes=4,
        gpus_per_node=8,
        cpus_per_task=32,
        time="1-02:00:00",
        partition="gpu",
        account="proj-1",
        extra=("--output=run-%j.out", "--exclusive"),
    )
    script = script_for(options=options)

    sbatch = [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH")]
    assert sbatch == [
        "--job-name=job-1",
        "--nodes=4",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--cpus-per-task=32",
        "--time=1-02:00:00",
        "--partition=gpu",
        "--account=proj-1",
        "--chdir=/work/dir",
        "--output=run-%j.out",
        "--exclusive",
    ]
    assert script.startswith("#!/bin/bash\n#SBATCH")
    assert "  --kill-on-bad-exit=1 --export=ALL --cpus-per-task=32 \\\n" in script  # srun: not inherited
    task = task_of(script)
    argv = task.first.argv
    assert argv[argv.index("--nproc-per-node") + 1] == "8"  # the GPUs per node
    assert argv[argv.index("--nnodes") + 1] == "4"


def test_rendezvous_at_the_first_node_on_a_free_port() -> None:
    script = script_for()

    assert 'rdzv_host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)' in script
    assert "rdzv_port=$(" in script and "s.bind((" in script
    assert "--kill-on-bad-exit=1" in script and "--ntasks-per-node=1" in script
    task = task_of(script)
    for command, is_host in ((task.first, "1"), (task.rest, "0")):
        argv = command.argv
        assert argv[argv.index("--rdzv-backend") + 1] == "c10d"
        assert argv[argv.index("--rdzv-endpoint") + 1] == f"{slurm_field('rdzv_host')}:{slurm_field('rdzv_port')}"
        assert argv[argv.index("--rdzv-conf") + 1] == f"is_host={is_host}"
        assert argv[argv.index("--log-dir") + 1] == f"{slurm_field('run_dir')}/torchrun"


def test_a_fixed_rendezvous_port() -> None:
    assert "\nrdzv_port=29500\n" in script_for(rdzv_port=29500)


def test_script_arguments_arrive_byte_for_byte() -> None:
    task = task_of(script_for(*NASTY))

    assert task.first.argv[-len(NASTY) - 1 :] == ["train.py", *NASTY]
    assert task.rest.argv[-len(NASTY) - 1 :] == ["train.py", *NASTY]


def test_exports_are_the_launch_environment_and_survive_bash(tmp_path: Path) -> None:
    values = {f"V{index}": value for index, value in enumerate(NASTY)}
    script = script_for(env=values, assignments=["HF_HOME=/data/hf cache"])
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export "))

    shown = subprocess.run(
        [
            "bash",
            "-c",
            exports + '\nfor k in V0 V1 V2 V3 V4 V5 V6 V7 HF_HOME OMP_NUM_THREADS; do printf "%s\\0" "${!k}"; done',
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split("\0")[:-1]

    assert shown == [*NASTY, "/data/hf cache", "1"]
    assert not list(tmp_path.iterdir())  # nothing ran: $(...) stayed text
    task = task_of(script)
    # What only a node knows, and what bash would mangle, travel in the task instead.
    assert task.first.env["TORCHELASTIC_ERROR_FILE"] == f"{slurm_field('run_dir')}/torchrun/error.json"
    assert task.first.env["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "\x1e${rank}\x1f"
    assert "V2" not in task.first.env


def test_python_runner_gets_each_node_its_rank() -> None:
    task = task_of(script_for(runner="python"))

    assert task.first.env["NODE_RANK"] == "0"
    assert task.rest.env["NODE_RANK"] == slurm_field("node_rank")
    assert task.first.env["MASTER_ADDR"] == slurm_field("rdzv_host")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (SbatchOptions(nodes=0), "--nodes must be a whole number from 1 to 65536"),
        (SbatchOptions(partition="gpu a"), "--partition 'gpu a': an #SBATCH value may hold no whitespace"),
        (SbatchOptions(account="a\nrm -rf /"), "an #SBATCH value may hold no whitespace or control characters"),
        (SbatchOptions(extra=("--output=x\necho pwned",)), "--sbatch-arg"),
        (SbatchOptions(extra=("exclusive",)), "--sbatch-arg takes an sbatch option"),
        (SbatchOptions(time="an hour"), "--time must be SLURM's"),
    ],
)
def test_bad_sbatch_values_are_refused(options: SbatchOptions, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        script_for(options=options)


def test_the_node_task_fills_in_what_only_the_node_knows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    task = task_of(script_for(*NASTY, runner="python"))

    run = node_task.prepare(task, "h0", "29400", {"SLURM_NODEID": "2", "KEEP": "me"})

    assert run.path == RunDir.of("job-1").path and str(tmp_path) in str(run.path)
    spec = run.read_spec()
    assert spec is not None
    assert spec.argv[-len(NASTY) :] == NASTY
    assert (spec.env["NODE_RANK"], spec.env["MASTER_ADDR"], spec.env["MASTER_PORT"]) == ("2", "h0", "29400")
    assert spec.env["TORCHELASTIC_ERROR_FILE"] == f"{run.path}/torchrun/error.json"
    assert (spec.env["KEEP"], spec.env["LAUNCHER_JOB"], spec.cwd) == ("me", "job-1", "/work/dir")


def test_the_node_task_runs_the_command_and_exits_with_its_status(tmp_path: Path) -> None:
    command = TaskCommand([sys.executable, "-c", "import sys; print('hello from the task'); sys.exit(3)"], {})
    payload = json.dumps(to_wire(SlurmTask("job-2", str(tmp_path), command, command)))
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "SLURM_NODEID": "0"}

    done = subprocess.run(
        [sys.executable, "-P", "-m", "launcher.node.slurm_task", "h0", "1", payload],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 3, done.stderr
    run = RunDir(tmp_path / "launcher" / "runs" / "job-2" / os.uname().nodename)
    ended = run.read_exit()
    assert ended is not None and ended.exit_code == 3
    assert b"hello from the task" in run.log_path.read_bytes()


def test_the_node_task_refuses_a_bad_task() -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "launcher.node.slurm_task", "h0", "1", "{not json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "bad task" in done.stderr


# --- slots of --hosts slurm -------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "slots"),
    [
        ({"SLURM_JOB_CPUS_PER_NODE": "2(x3)"}, [2, 2, 2]),
        ({"SLURM_JOB_CPUS_PER_NODE": "4(x2),8"}, [4, 4, 8]),
        ({"SLURM_JOB_CPUS_PER_NODE": "4(x3)", "SLURM_NTASKS_PER_NODE": "1"}, [1, 1, 1]),
        ({"SLURM_JOB_CPUS_PER_NODE": "4(x3)", "SLURM_GPUS_ON_NODE": "8"}, [8, 8, 8]),
        ({}, [None, None, None]),
    ],
)
def test_hosts_slurm_slots(environ: dict[str, str], slots: list[int | None]) -> None:
    hosts = resolve_hosts("slurm", {"SLURM_JOB_NODELIST": "n[1-3]", **environ})

    assert [h.slots for h in hosts] == slots


@pytest.mark.parametrize(
    ("value", "message"),
    [("4(x2)", "gives 2 node(s), not 3"), ("four", "expected counts such as 4(x2),8")],
)
def test_hosts_slurm_bad_cpus_per_node(value: str, message: str) -> None:
    with pytest.raises(HostsFileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_hosts("slurm", {"SLURM_JOB_NODELIST": "n[1-3]", "SLURM_JOB_CPUS_PER_NODE": value})


# --- the command ------------------------------------------------------------------------


def launcher_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env={"PATH": os.environ["PATH"], "HOME": str(cwd), "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sbatch_prints_the_script_or_writes_it(tmp_path: Path) -> None:
    printed = launcher_cli("sbatch", "-N", "2", "--name", "j", "train.py", "--lr", "3e-4", cwd=tmp_path)
    written = launcher_cli("sbatch", "-N", "2", "--name", "j", "-o", "job.sh", "train.py", "--lr", "3e-4", cwd=tmp_path)

    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=j\n#SBATCH --nodes=2\n")
    assert written.returncode == 0 and written.stdout == "", written.stderr
    script = tmp_path / "job.sh"
    assert script.read_text() == printed.stdout and os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0  # it parses


def test_sbatch_o_writes_a_script_only_its_user_reads_and_names_its_secrets(tmp_path: Path) -> None:
    old = tmp_path / "job.sh"
    old.write_text("#!/bin/bash\n")
    old.chmod(0o755)  # as an older version wrote it: rewritten, it is 0700 too
    previous = os.umask(0o022)
    try:
        secret = launcher_cli(
            "sbatch", "--name", "j", "-e", "WANDB_API_KEY=s3cret", "-e", "EMPTY_TOKEN=", "-o", "job.sh", "train.py",
            cwd=tmp_path, HF_TOKEN="hf_abc",
        )  # fmt: skip
        plain = launcher_cli("sbatch", "--name", "j", "-o", "plain.sh", "train.py", cwd=tmp_path)
    finally:
        os.umask(previous)

    assert secret.returncode == 0 and secret.stdout == "", secret.stderr
    assert secret.stderr.splitlines() == [
        "launcher: job.sh holds secret-named variables HF_TOKEN, WANDB_API_KEY"
        " (mode 0700: readable by you only; keep it so)"
    ]  # named, never shown; an empty one holds nothing
    assert "export HF_TOKEN=hf_abc" in old.read_text() and "WANDB_API_KEY=s3cret" in old.read_text()
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    for script in (old, tmp_path / "plain.sh"):
        assert stat.S_IMODE(script.stat().st_mode) == 0o700 and os.access(script, os.X_OK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.sh", "plain.sh"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--partition", "a b", "x.py"), "--partition 'a b': an #SBATCH value may hold no whitespace"),
        (("--name", "bad name", "x.py"), "bad job name 'bad name'"),
        (("--sbatch-arg", "exclusive", "x.py"), "--sbatch-arg takes an sbatch option"),
    ],
)
def test_sbatch_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = launcher_cli("sbatch", *args, cwd=tmp_path)

    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("Error: ")
    assert message in result.stderr


def test_sbatch_submit_without_sbatch_on_path(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()

    result = launcher_cli("sbatch", "--submit", "-o", "job.sh", "x.py", cwd=tmp_path, PATH=str(empty))

    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "Error: sbatch not found on PATH (SLURM's client commands are needed here)"
    assert not (tmp_path / "job.sh").exists()


# --- what SLURM answers (its commands stood in for by scripts on PATH) --------------------


def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **programs: str) -> None:
    """Put scripts named after SLURM's commands first on PATH: ``name=shell code``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, code in programs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{code}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.parametrize(
    ("state", "reason"), [("FAILED", "NonZeroExitCode"), ("BOOT_FAIL", "None"), ("CANCELLED", "None")]
)
def test_a_job_that_failed_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str, reason: str) -> None:
    fake_slurm(
        tmp_path, monkeypatch, scontrol=f"echo 'JobId=7 JobName=j JobState={state} Reason={reason} NodeList=(null)'"
    )

    with pytest.raises(SlurmError, match=rf"^SLURM job 7 failed to start: {state} \(reason: {reason}\)$"):
        slurm_jobs.wait_until_started("7", timeout=5)


def test_a_started_job_gives_its_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_slurm(tmp_path, monkeypatch, scontrol="echo 'JobId=7 JobState=RUNNING Reason=None NodeList=gpu[01-02],cpu7'")

    assert slurm_jobs.wait_until_started("7", timeout=5).nodes == ("gpu01", "gpu02", "cpu7")


def test_scancel_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_slurm(
        tmp_path,
        monkeypatch,
        scontrol="echo 'JobId=7 JobState=RUNNING Reason=None NodeList=n1'",
        scancel="echo 'scancel: error: Kill job error on job id 7: Access/permission denied' >&2; exit 1",
    )

    with pytest.raises(SlurmError, match=r"^scancel refused SLURM job 7: scancel: error: Kill job error on job id 7"):
        slurm_jobs.cancel("7")


def test_a_job_slurm_forgot_is_not_cancelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_slurm(
        tmp_path,
        monkeypatch,
        scontrol="echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
        scancel=f"touch {tmp_path}/called; exit 1",
    )

    assert slurm_jobs.cancel("7") is None  # ended over MinJobAge ago: nothing to scancel
    assert not (tmp_path / "called").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--hosts", "h1,h2"), "sbatch takes no --hosts: SLURM chooses the nodes (use #SBATCH --nodelist or --nodes)"),
        (("--hosts=h1,h2",), "sbatch takes no --hosts: SLURM chooses the nodes (use #SBATCH --nodelist or --nodes)"),
        (("--exclude", "h1"), "sbatch takes no --exclude: SLURM chooses the nodes (use #SBATCH --nodelist or --nodes)"),
        (("--sync",), "sbatch takes no --sync (see launcher sbatch --help)"),
    ],
)
def test_sbatch_refuses_a_launch_option_instead_of_running_it_as_the_script(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = launcher_cli("sbatch", *args, "-o", "job.sh", "train.py", cwd=tmp_path)

    assert (result.returncode, result.stderr) == (2, f"Error: {message}\n")
    assert not (tmp_path / "job.sh").exists()
