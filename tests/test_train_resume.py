"""examples/train_llm.py resumes, not restarts: what a job relaunched by ``launch --restarts`` runs.

Real processes, no mocks: a tiny model on one process (no torchrun: the script then runs a
one-process group), killed after a checkpoint and started again as attempt 2; then two
processes standing for two hosts without a shared disk, only one of which has the checkpoint.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "examples" / "train_llm.py"
TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--seq-len", "16", "--batch-size", "4", "--log-every", "1"]
# Variables that would make the script join a process group (or read another attempt).
STARTER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def script_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STARTER_VARIABLES and k != "LAUNCHER_ATTEMPT"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["OMP_NUM_THREADS"] = "1"  # two shared cores, and the same arithmetic in every run
    env.update(extra)
    return env


def train(*args: str, env: dict[str, str] | None = None) -> str:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, *args],
        env=script_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)  # type: ignore[no-any-return]


def assert_same_training_state(a: Path, b: Path) -> None:
    """The same weights and the same optimizer moments: the same point of the same run."""
    first, second = load(a), load(b)
    assert first["steps"] == second["steps"]
    assert first["model"].keys() == second["model"].keys()
    for name, tensor in first["model"].items():
        assert torch.equal(tensor, second["model"][name]), name
    moments = [first["optimizer"]["state"], second["optimizer"]["state"]]
    assert moments[0].keys() == moments[1].keys() and moments[0]
    for index, state in moments[0].items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[key], moments[1][index][key]), (index, key)


def saved_steps(output: str) -> list[int]:
    return [int(step) for step in re.findall(r"^saved checkpoint .*step-([0-9]+)\.pt$", output, re.M)]


def test_a_killed_run_resumes_from_its_last_checkpoint_as_if_never_stopped(tmp_path: Path) -> None:
    steps = ["--steps", "8", "--checkpoint-every", "2"]
    unbroken = train(*steps, "--checkpoint-dir", str(tmp_path / "unbroken"))
    assert saved_steps(unbroken) == [2, 4, 6, 8]

    directory = tmp_path / "killed"
    killed = subprocess.Popen(
        [sys.executable, str(SCRIPT), *TINY, *steps, "--checkpoint-dir", str(directory), "--step-delay", "0.5"],
        env=script_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert killed.stdout is not None
        before_kill = ""
        for line in killed.stdout:  # kill it (as a lost host would be) once it has saved step 4
            before_kill += line
            if saved_steps(line) == [4]:
                killed.send_signal(signal.SIGKILL)
                break
        output = before_kill + killed.communicate(timeout=60)[0]
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL, output
    # From the directory, not the output: the kill may land between a save and its line.
    last_saved = max(int(path.name[len("step-") : -len(".pt")]) for path in directory.glob("step-*.pt"))
    assert 4 <= last_saved < 8, output  # the sleeps leave it far from the end

    host = socket.gethostname()
    half_written = (directory / f"step-{last_saved:08d}.pt").read_bytes()[:1000]
    # A newer checkpoint being written on another host sharing this disk (or killed there), one
    # this host's killed attempt left, and one whose name says complete but whose bytes do not.
    (directory / ".step-00000099.pt.other-host.4242.tmp").write_bytes(half_written)
    (directory / f".step-00000098.pt.{host}.4242.tmp").write_bytes(half_written)
    (directory / "step-00000097.pt").write_bytes(half_written)

    resumed = train(*steps, "--checkpoint-dir", str(directory), env=script_env(LAUNCHER_ATTEMPT="2"))
    assert f"resumed from step {last_saved} (attempt 2)" in resumed, resumed
    assert "step 1/8" not in resumed and f"step {last_saved + 1}/8 loss" in resumed, resumed
    # Only the complete-looking one is tried (and skipped); temp files are not checkpoints.
    skipped = re.findall(r"^train_llm: skipping unreadable checkpoint (\S+):", resumed, re.M)
    assert skipped == [str(directory / "step-00000097.pt")], resumed
    assert (directory / ".step-00000099.pt.other-host.4242.tmp").exists()  # not this host's to remove
    assert not (directory / f".step-00000098.pt.{host}.4242.tmp").exists()
    assert saved_steps(resumed) == list(range(last_saved + 2, 9, 2))
    assert_same_training_state(tmp_path / "unbroken" / "step-00000008.pt", directory / "step-00000008.pt")
    left = sorted(path.name for path in directory.glob("step-*.pt"))
    assert "step-00000008.pt" in left and len(left) == 2, left  # the newest two are kept


def test_a_host_without_the_checkpoint_gets_it_from_one_that_has_it(tmp_path: Path) -> None:
    # Two processes on this machine stand for two hosts without a shared disk: each its own
    # --checkpoint-dir. The new rank 0 has none, as on a spare host after a restart.
    spare, survivor = tmp_path / "spare", tmp_path / "survivor"
    train("--steps", "2", "--checkpoint-every", "2", "--checkpoint-dir", str(survivor))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), *TINY, "--steps", "4", "--checkpoint-every", "2", "--checkpoint-dir", str(d)],
            env=script_env(
                RANK=str(rank),
                LOCAL_RANK="0",  # each the first of its host
                WORLD_SIZE="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                LAUNCHER_ATTEMPT="2",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank, d in enumerate([spare, survivor])
    ]
    try:
        outputs = [rank.communicate(timeout=180)[0] for rank in ranks]
    finally:
        for rank in ranks:
            rank.kill()
            rank.wait()
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert "resumed from step 2 (attempt 2)" in outputs[0], outputs[0]
    assert "step 3/4 loss" in outputs[0] and "step 1/4" not in outputs[0], outputs[0]
    assert [saved_steps(output) for output in outputs] == [[4], [4]]
    # The spare trained from the survivor's state (optimizer included), so their copies agree.
    assert_same_training_state(spare / "step-00000004.pt", survivor / "step-00000004.pt")
