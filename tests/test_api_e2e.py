"""The blocking Python API on the real test cluster: 2 hosts x 2 processes over SSH.

The calls run in this process, with the launching side's environment of the cluster
(its HOME, so asyncssh reads the cluster's ssh config and known_hosts, and its state
directory). The functions come from ``api_functions``, which every host imports from
this directory (the cluster shares the filesystem).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import api_functions
import pytest
from cluster import Cluster
from launcher_cli import REPO, kill_jobs_left_running, leftovers

import launcher
from launcher.errors import JobFailed

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures(kill_jobs_left_running.__name__)]

TESTS = REPO / "tests"
HOSTS = "h0,h1"


@pytest.fixture
def launching_side(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    for key, value in cluster.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    yield cluster


def on_cluster(fn: Any, *args: Any, **options: Any) -> dict[int, Any]:
    return launcher.run(fn, *args, hosts=HOSTS, nproc_per_node=2, cwd=str(TESTS), **options)


def test_launch_then_wait_on_two_hosts(launching_side: Cluster) -> None:
    job = launcher.launch("examples/distributed_sum.py", hosts=HOSTS, nproc_per_node=2, cwd=str(REPO))

    assert job.hosts == ("h0", "h1")
    result = job.wait(timeout=180)
    assert result.ok
    assert {rank: (status.state, status.exit_code) for rank, status in result.ranks.items()} == {
        rank: ("succeeded", 0) for rank in range(4)
    }
    assert [result.host_of(rank) for rank in range(4)] == ["h0", "h0", "h1", "h1"]
    oks = [line.text for line in job.logs(rank=[2, 3]) if line.text.endswith(" ok")]
    assert len(oks) == 2 and all("host=h1" in text and "sum=10" in text for text in oks), oks


def test_run_returns_each_ranks_value_with_an_all_reduce_inside(launching_side: Cluster) -> None:
    def place_and_sum() -> tuple[dict[str, Any], tuple[int, float]]:
        return api_functions.where_am_i(10), api_functions.all_reduce_rank()

    values = on_cluster(place_and_sum)

    assert sorted(values) == [0, 1, 2, 3]
    for rank, (place, (reduced_rank, total)) in values.items():
        assert (place["rank"], place["env_rank"], reduced_rank) == (rank, rank, rank)
        assert place["world_size"] == 4 and place["value"] == rank * 10
        assert place["host"] == ("h0" if rank < 2 else "h1")
        assert total == 10.0


def test_a_failing_rank_is_reraised_with_host_and_rank(launching_side: Cluster) -> None:
    with pytest.raises(JobFailed) as raised:
        on_cluster(api_functions.fail_on_rank, 3, name="api-e2e-raise")

    failed = raised.value
    assert (failed.host, failed.rank, failed.exception) == ("h1", 3, "ValueError: rank 3 refuses")
    assert failed.traceback[-1] == "ValueError: rank 3 refuses"
    assert any("fail_on_rank" in line for line in failed.traceback)
    # The other three waited in a barrier for rank 3; the teardown stopped them on both hosts.
    status = launcher.Job.get("api-e2e-raise").status()
    assert status.state == "failed" and all(h.state in ("failed", "killed") for h in status.hosts), status
    for host in launching_side.hosts[:2]:
        assert leftovers(host, ("launcher.node.call_function", "torch.distributed.run")) == []


def test_submit_then_result_and_the_context_under_launcher(launching_side: Cluster) -> None:
    job = launcher.submit(api_functions.run_context, hosts=HOSTS, nproc_per_node=2, cwd=str(TESTS))

    contexts = job.result(timeout=180)

    assert sorted(contexts) == [0, 1, 2, 3]
    for rank, ctx in contexts.items():
        assert (ctx["rank"], ctx["world_size"], ctx["local_rank"]) == (rank, 4, rank % 2)
        assert (ctx["node_rank"], ctx["nnodes"], ctx["host"]) == (rank // 2, 2, f"h{rank // 2}")
        assert (ctx["launcher_job"], ctx["source"], ctx["is_main"]) == (job.name, "torchrun", rank == 0)
        assert ctx["device"] == "cpu"
