"""``launch --restarts``'s policy (``launching/recovery.py``): whom to blame, what replaces it."""

from __future__ import annotations

import pytest

from launcher.hosts.files import Host
from launcher.job.status import HostStatus, JobStatus, RootCause
from launcher.launching import recovery
from launcher.launching.recovery import NoHostsLeft, judge, leave_out, next_hosts

NOW = 1_000_000.0


def host(label: str) -> Host:
    return Host(name=label)


def failed(root: RootCause | None, state: str = "failed") -> JobStatus:
    return JobStatus("job", state, (HostStatus("h0", "failed"),), root)  # type: ignore[arg-type]


def cause(exception: str = "", signal: str | None = None, lost: bool = False, host: str = "h1") -> RootCause:
    return RootCause(host, None if lost else 3, None if signal else 1, signal, exception, (), NOW, lost=lost)


def test_a_lost_host_is_blamed() -> None:
    verdict = judge(failed(cause("h1 lost: no heartbeat since 10:21:02", lost=True)), 0)
    assert (verdict.action, verdict.blame, verdict.ordinary) == ("restart", "h1", False)
    assert verdict.reason == "h1 lost: no heartbeat since 10:21:02"


@pytest.mark.parametrize(
    "root",
    [
        cause("", signal="SIGSEGV"),
        cause("", signal="SIGKILL"),
        cause("RuntimeError: CUDA error: an illegal memory access was encountered"),
        cause("torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error"),
        cause("RuntimeError: CUDA error: uncorrectable ECC error encountered"),
    ],
)
def test_a_rank_ended_by_a_signal_or_a_gpu_error_blames_its_host(root: RootCause) -> None:
    verdict = judge(failed(root), 1)  # an ordinary failure before does not make it the code's
    assert (verdict.action, verdict.blame) == ("restart", "h1")
    assert verdict.reason.startswith("h1 rank 3: ")


def test_out_of_memory_is_not_the_hosts_fault() -> None:
    verdict = judge(failed(cause("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")), 0)
    assert (verdict.action, verdict.blame, verdict.ordinary) == ("restart", None, True)


def test_an_ordinary_exception_tries_the_same_hosts_once_then_blames_the_code() -> None:
    first = judge(failed(cause("ValueError: bad config")), 0)
    assert (first.action, first.blame, first.ordinary) == ("restart", None, True)
    assert "the same hosts again" in first.reason
    second = judge(failed(cause("ValueError: bad config")), 1)
    assert second.action == "give_up" and second.blame is None
    assert second.reason == "the code failed 2 times, not a host: h1 rank 3: ValueError: bad config"


@pytest.mark.parametrize(("state", "action"), [("succeeded", "done"), ("killed", "done"), ("running", "wait")])
def test_an_attempt_that_did_not_fail_is_not_restarted(state: str, action: str) -> None:
    assert judge(failed(None, state), 0).action == action


def test_a_hang_restarts_on_the_same_hosts() -> None:
    verdict = judge(failed(None, "hung"), 0)
    assert (verdict.action, verdict.blame, verdict.ordinary) == ("restart", None, False)


def test_the_cooldown_doubles_each_time_a_host_is_left_out() -> None:
    once = leave_out({}, "h1", "lost", NOW)
    twice = leave_out(once, "h1", "lost again", NOW + 1)
    assert once["h1"]["until"] == NOW + recovery.COOLDOWN_S
    assert twice["h1"] == {
        "reason": "lost again",
        "at": NOW + 1,
        "times": 2,
        "until": NOW + 1 + 2 * recovery.COOLDOWN_S,
    }


def test_a_spare_takes_the_place_of_the_blamed_host() -> None:
    left = leave_out({}, "h1", "lost", NOW)
    chosen, taken = next_hosts([host("h0"), host("h2")], 3, 3, [host("s0"), host("s1")], [], left, NOW)
    assert [h.label for h in chosen] == ["h0", "h2", "s0"]
    assert [h.label for h in taken] == ["s0"]


def test_a_spare_cooling_down_is_skipped_and_a_host_whose_cooldown_ended_returns() -> None:
    left = leave_out(leave_out({}, "s0", "failed its checks", NOW - 10), "h1", "lost", NOW - 2 * recovery.COOLDOWN_S)
    left = leave_out(left, "h2", "lost", NOW)
    chosen, taken = next_hosts([host("h0")], 3, 1, [host("s0")], [host("h1")], left, NOW)
    assert [h.label for h in chosen] == ["h0", "h1"]
    assert [h.label for h in taken] == ["h1"]


def test_without_spares_the_job_goes_on_with_fewer_hosts_within_nnodes() -> None:
    left = leave_out({}, "h2", "lost", NOW)
    chosen, taken = next_hosts([host("h0"), host("h1")], 3, 2, [], [], left, NOW)
    assert [h.label for h in chosen] == ["h0", "h1"] and taken == ()


def test_below_the_minimum_the_job_fails_naming_every_host_left_out() -> None:
    left = leave_out(
        leave_out({}, "h2", "lost: no heartbeat since 10:21:02", NOW), "s0", "failed its checks: no tmux", NOW
    )
    with pytest.raises(NoHostsLeft) as raised:
        next_hosts([host("h0"), host("h1")], 3, 3, [host("s0")], [], left, NOW)
    assert str(raised.value) == (
        "2 host(s) left, --nnodes needs 3"
        " (left out: h2: lost: no heartbeat since 10:21:02; s0: failed its checks: no tmux)"
    )


def test_nnodes_range() -> None:
    assert recovery.nnodes_range(None, 3) == (3, 3)
    assert recovery.nnodes_range("2:4", 3) == (2, 4)
    assert recovery.nnodes_range("3", 3) == (3, 3)


@pytest.mark.parametrize(("code", "name"), [(137, "SIGKILL"), (139, "SIGSEGV"), (-11, "SIGSEGV")])
def test_a_shells_exit_code_above_128_is_a_signal(code: int, name: str) -> None:
    root = RootCause("h1", None, code, None, "", (), NOW)
    assert recovery.signal_of(root) == name
    assert judge(failed(root), 0).blame == "h1"
    assert recovery.cause_line(root) == f"h1: killed by {name}"


def test_an_ordinary_exit_code_is_no_signal() -> None:
    assert recovery.signal_of(RootCause("h1", 0, 1, None, "", (), NOW)) is None
