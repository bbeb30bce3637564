"""``launcher doctor --bandwidth`` on every host: one process per host, torch.distributed.

Run as ``python -m launcher.bandwidth_job`` by a job of ``--runner exec`` (``MASTER_ADDR``,
``MASTER_PORT``, ``NODE_RANK``, ``NNODES`` set by the launcher), so rank i is the i-th host
of the hosts file. It imports torch, so it is no part of the node agent (``node/``), and
nothing of the launching side: only the wire's marker.

1. latency and bus bandwidth of the whole set: all-reduces of growing sizes, each timed as
   the slowest rank saw it (every rank agrees on when to stop growing);
2. point to point, to name the host or link: disjoint pairs exchange a buffer both ways;
   the hosts below ``--min-ratio`` of the median (suspects) are paired with the fastest
   (DLRover's bisection), so that a slow host is slow in both rounds and its healthy
   partners are not; a suspect still slow is measured once more with a new fast partner,
   one pair at a time, which clears a host that was only slowed by the pairs beside it
   sharing a CPU or a switch. A host's figure is the best it reached.

3. with NCCL (GPUs), each host times a bf16 matmul on each of its GPUs (``gpu_speeds``).

Rank 0 prints ``BANDWIDTH_MARKER`` and the results as one line of JSON; the launching side
(``doctor/bandwidth.py``) reads it from the job's logs and judges.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from launcher.protocol.doctor import BANDWIDTH_MARKER

_ITERATIONS = 3
_SMALLEST = 64 << 10


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m launcher.bandwidth_job")
    parser.add_argument("--seconds", type=float, default=30.0, help="the whole test's bound")
    parser.add_argument("--max-bytes", type=int, default=4 << 20, help="the largest all-reduce")
    parser.add_argument("--p2p-bytes", type=int, default=512 << 10, help="each point-to-point message")
    parser.add_argument("--min-ratio", type=float, default=0.5, help="below this fraction of the median: slow")
    args = parser.parse_args(argv)
    rank, world = int(os.environ["NODE_RANK"]), int(os.environ["NNODES"])
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # GPU i is nvidia-smi's GPU i
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    device = torch.device("cuda", 0) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    began = time.monotonic()
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=args.seconds))
    try:
        joined = time.monotonic() - began
        results = measure(rank, world, device, args)
        if backend == "nccl":  # every GPU of every host, gathered on rank 0
            speeds: list[Any] = [None] * world
            dist.all_gather_object(speeds, gpu_speeds())
            results["gpus"] = speeds
        if rank == 0:
            results.update(backend=backend, world=world, join_s=joined, torch=torch.__version__)
            print(BANDWIDTH_MARKER + json.dumps(results), flush=True)
    finally:
        dist.destroy_process_group()


def gpu_speeds(size: int = 4096, iterations: int = 10) -> list[dict[str, Any]]:
    """Each GPU of this host: a bf16 matmul of ``size`` squared, in TFLOPS (nvidia-smi's order)."""
    found = []
    for index in range(torch.cuda.device_count()):
        a = torch.randn(size, size, device=index, dtype=torch.bfloat16)
        b = torch.randn(size, size, device=index, dtype=torch.bfloat16)
        for _ in range(3):  # warm up: clocks, cuBLAS's choice of kernel
            a @ b
        torch.cuda.synchronize(index)
        began = time.perf_counter()
        for _ in range(iterations):
            a @ b
        torch.cuda.synchronize(index)
        took = time.perf_counter() - began
        name = torch.cuda.get_device_name(index)
        found.append({"index": index, "name": name, "tflops": 2 * size**3 * iterations / took / 1e12})
        del a, b
    return found


def measure(rank: int, world: int, device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    latency = _allreduce_seconds(torch.zeros(1, device=device), world, iterations=5)
    sizes = _allreduce_sizes(world, device, args.max_bytes, budget=args.seconds / 4)
    pairs: list[dict[str, float]] = []
    if world > 1:
        pairs += _exchange(rank, _first_round(world), device, args.p2p_bytes)
        suspects = _suspects(_best_per_rank(world, pairs), args.min_ratio)
        if suspects:  # each with one of the fastest, the pairs at once
            pairs += _exchange(rank, _bisection(_best_per_rank(world, pairs), suspects), device, args.p2p_bytes)
            suspects = _suspects(_best_per_rank(world, pairs), args.min_ratio)
        if suspects:  # the last doubt: one pair at a time (no pair shares a CPU or switch with another), a new partner
            rounds = _one_at_a_time(_best_per_rank(world, pairs), suspects, pairs)
            pairs += _exchange(rank, rounds, device, args.p2p_bytes)
    return {"latency_s": latency, "allreduce": sizes, "pairs": pairs}


def _allreduce_seconds(tensor: torch.Tensor, world: int, iterations: int) -> float:
    """Seconds per all-reduce of ``tensor``, as the slowest rank saw it (all ranks agree)."""
    dist.all_reduce(tensor)  # warm up: connections, buffers
    _sync(tensor.device)
    dist.barrier()
    began = time.perf_counter()
    for _ in range(iterations):
        dist.all_reduce(tensor)
    _sync(tensor.device)
    took = torch.tensor([(time.perf_counter() - began) / iterations], dtype=torch.float64, device=tensor.device)
    dist.all_reduce(took, op=dist.ReduceOp.MAX)
    return float(took.item())


def _allreduce_sizes(world: int, device: torch.device, largest: int, budget: float) -> list[dict[str, float]]:
    """Growing sizes (x4) up to ``largest`` bytes, while the sizes so far fit ``budget`` seconds."""
    found: list[dict[str, float]] = []
    size, spent = _SMALLEST, 0.0
    while size <= largest:
        seconds = _allreduce_seconds(torch.ones(size // 4, device=device), world, _ITERATIONS)
        factor = 2 * (world - 1) / world if world > 1 else 1.0
        found.append({"bytes": size, "seconds": seconds, "bus_bandwidth": size * factor / seconds})
        spent += seconds * (_ITERATIONS + 2)
        if spent + 4 * seconds * (_ITERATIONS + 2) > budget:  # the next size takes about four times as long
            break
        size *= 4
    return found


def _first_round(world: int) -> list[list[tuple[int, int]]]:
    """Disjoint pairs (0,1), (2,3)...; an odd last rank meets rank 0 in a round of its own."""
    pairs = [(i, i + 1) for i in range(0, world - 1, 2)]
    return [pairs, [(world - 1, 0)]] if world % 2 and world > 1 else [pairs]


def _suspects(best: list[float], min_ratio: float) -> list[int]:
    """Ranks below ``min_ratio`` of the median, slowest first."""
    median = statistics.median(best)
    return sorted((r for r, b in enumerate(best) if b < min_ratio * median), key=lambda r: best[r])


def _bisection(best: list[float], suspects: list[int]) -> list[list[tuple[int, int]]]:
    """The slowest suspect with the fastest host, the next with the second fastest..."""
    fast = sorted((r for r in range(len(best)) if r not in suspects), key=lambda r: -best[r])
    return [list(zip(suspects, fast, strict=False))]


_MOST_ALONE = 8
"""Suspects re-measured one pair at a time, at most (the slowest first)."""


def _one_at_a_time(best: list[float], suspects: list[int], done: list[dict[str, float]]) -> list[list[tuple[int, int]]]:
    """Each suspect with the fastest host it has not met yet (the fastest again when it has met
    them all, as among three hosts: a pair slowed once by its neighbours gets a quiet second
    try), one pair per round."""
    met = {(int(p["a"]), int(p["b"])) for p in done} | {(int(p["b"]), int(p["a"])) for p in done}
    fast = sorted((r for r in range(len(best)) if r not in suspects), key=lambda r: -best[r])
    rounds = []
    for suspect in suspects[:_MOST_ALONE]:
        partner = next((r for r in fast if (suspect, r) not in met), fast[0] if fast else None)
        if partner is not None:
            rounds.append([(suspect, partner)])
    return rounds


def _exchange(
    rank: int, rounds: list[list[tuple[int, int]]], device: torch.device, size: int
) -> list[dict[str, float]]:
    """Each pair of each round sends ``size`` bytes both ways; every rank learns every pair's figures."""
    found = []
    for pairs in rounds:
        every = torch.zeros(len(pairs), 2, dtype=torch.float64)
        for index, (a, b) in enumerate(pairs):
            if rank in (a, b):
                every[index] = torch.tensor(_ping_pong(a if rank == b else b, rank == a, device, size))
        shared = every.to(device)
        dist.all_reduce(shared)  # only the pair's starter measured: the sum is its figures
        for (a, b), (bandwidth, latency) in zip(pairs, shared.tolist(), strict=True):
            found.append({"a": a, "b": b, "bandwidth": bandwidth, "latency_s": latency})
    return found


def _ping_pong(peer: int, starts: bool, device: torch.device, size: int) -> tuple[float, float]:
    """Bytes per second each way and the one-way latency; measured by the starter (0, 0 on the other)."""
    small, big = torch.zeros(1, device=device), torch.zeros(size // 4, device=device)

    def round_trip(tensor: torch.Tensor) -> None:
        if starts:
            dist.send(tensor, peer)
            dist.recv(tensor, peer)
        else:
            dist.recv(tensor, peer)
            dist.send(tensor, peer)

    round_trip(small)  # the connection between the two
    began = time.perf_counter()
    for _ in range(_ITERATIONS):
        round_trip(small)
    latency = (time.perf_counter() - began) / _ITERATIONS / 2
    began = time.perf_counter()
    for _ in range(_ITERATIONS):
        round_trip(big)
    _sync(device)
    took = time.perf_counter() - began
    return (2 * size * _ITERATIONS / took, latency) if starts else (0.0, 0.0)


def _best_per_rank(world: int, pairs: list[dict[str, float]]) -> list[float]:
    best = [0.0] * world
    for pair in pairs:
        for end in (int(pair["a"]), int(pair["b"])):
            best[end] = max(best[end], pair["bandwidth"])
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    main()
