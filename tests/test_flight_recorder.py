"""``launcher stack --nccl`` without NCCL: the node's dump through a rank's debug pipe (a
FIFO read as torch's NCCL watchdog reads it), and torch's analyzer run over dumps that a
gloo job made here (a collective that rank 1 never joined)."""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from nccl_pipe import answer_dump_requests

from launcher.job.flight_recorder import analyze
from launcher.node.nccl_dump import dump_flight_recorders
from launcher.node.rundir import RunDir

MAKE_DUMPS = """
import os, sys
import torch, torch.distributed as dist
import torch.multiprocessing as mp

def run(rank, out, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, TORCH_FR_BUFFER_SIZE="100")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    dist.all_reduce(torch.ones(1))
    if rank == 0:
        dist.all_reduce(torch.ones(1), async_op=True)  # rank 1 never joins this one
    data = torch._C._distributed_c10d._dump_fr_trace()
    with open(os.path.join(out, f"nccl_trace_rank_{rank}"), "wb") as fh:
        fh.write(data)
    os._exit(0)

if __name__ == "__main__":
    context = mp.start_processes(run, args=(sys.argv[1], sys.argv[2]), nprocs=2, start_method="fork", join=False)
    for process in context.processes:
        process.join(60)
"""


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


@pytest.fixture(scope="module")
def dumps(tmp_path_factory: pytest.TempPathFactory) -> dict[int, bytes]:
    """Two ranks' flight recorders from a real gloo job. gloo's dumps key their process group
    by '' where NCCL's (and the analyzer) use its id: set as NCCL writes it."""
    out = tmp_path_factory.mktemp("fr")
    subprocess.run([sys.executable, "-c", MAKE_DUMPS, str(out), _free_port()], check=True, timeout=120)
    made = {}
    for rank in (0, 1):
        dump = pickle.loads((out / f"nccl_trace_rank_{rank}").read_bytes())
        dump["pg_config"] = {"0": {"name": "0", "desc": "default_pg", "ranks": "[0, 1]"}}
        made[rank] = pickle.dumps(dump)
    return made


def test_the_analyzer_names_the_rank_that_never_joined(dumps: dict[int, bytes]) -> None:
    said = analyze(dumps)
    assert "missing ranks: {1}" in said, said
    assert "failed" not in said


def test_no_dump_is_said_plainly() -> None:
    assert analyze({}).startswith("no flight-recorder dump")


def test_a_broken_dump_is_one_line_of_why(tmp_path: Path) -> None:
    said = analyze({0: b"not a pickle", 1: b"neither"})
    assert "torch's flight-recorder analyzer failed:" in said.splitlines()[-1]


def test_the_node_dumps_through_the_ranks_debug_pipe(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.reset()
    reader = answer_dump_requests(run.path, 0, b"rank 0's dump")
    # rank 0: its watchdog answers; rank 1: no NCCL; rank 2: a dump a timeout left, no pipe
    (run.path / "nccl_trace_rank_2").write_bytes(b"rank 2's timeout dump")
    os.utime(run.path / "nccl_trace_rank_2", (1.0, 1.0))
    found, problems = dump_flight_recorders(run, [0, 1, 2], timeout=20)
    reader.join(5)
    assert {rank: base64.b64decode(data) for rank, data in found.items()} == {
        "0": b"rank 0's dump",
        "2": b"rank 2's timeout dump",
    }
    assert problems == ["rank 1: no NCCL debug pipe (the rank has no NCCL process group, or its torch has no pipe)"]


def test_a_pipe_nobody_reads_is_said(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.reset()
    os.mkfifo(run.path / "nccl_pipe_3.pipe", 0o600)
    found, problems = dump_flight_recorders(run, [3], timeout=1)
    assert found == {} and problems == ["rank 3: nobody reads its NCCL debug pipe (the rank's NCCL watchdog is gone)"]
