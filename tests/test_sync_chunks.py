"""Each chunk of a sync read, hashed and encoded once for all hosts (``sync/chunks.py``), and
what a host sends is still the manifest's content when hosts drift apart or a file changes."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from local_node import LocalNode

from launcher.protocol.sync import SyncChunk
from launcher.sync.chunks import CHUNK, Chunks
from launcher.sync.run import sync_agents
from launcher.sync.tree import SyncSourceError, Tree, scan_tree
from launcher.transport.agent import NodeAgent

SIZES = {"big.bin": 3 * CHUNK + 5, "exact.bin": 2 * CHUNK, "small.py": 10, "empty.txt": 0}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    rng = random.Random(3)
    for name, size in SIZES.items():
        (root / name).write_bytes(rng.randbytes(size))
    return root


def index_of(tree: Tree, name: str) -> int:
    return next(i for i, e in enumerate(tree.entries) if e.path == name)


def content(chunks: list[SyncChunk]) -> bytes:
    offsets = [c.offset for c in chunks]
    assert offsets == sorted(set(offsets)), "each chunk once, in order"
    return b"".join(base64.b64decode(c.data) for c in chunks)


@pytest.mark.parametrize("budget", [1, CHUNK, 2 * CHUNK, 64 * CHUNK])
@pytest.mark.parametrize("seed", range(5))
def test_hosts_at_any_distance_from_each_other_each_get_the_whole_file(source: Path, budget: int, seed: int) -> None:
    tree = scan_tree(str(source))
    chunks = Chunks(tree, budget)
    rng = random.Random(seed)
    for name in SIZES:
        index = index_of(tree, name)
        hosts: list[Iterator[SyncChunk]] = [chunks.of(index) for _ in range(3)]
        got: list[list[SyncChunk]] = [[] for _ in hosts]
        going = list(range(3))
        while going:  # the hosts take their next chunk in a random order: some run ahead
            host = rng.choice(going)
            chunk = next(hosts[host], None)
            if chunk is None:
                going.remove(host)
            else:
                got[host].append(chunk)
        whole = (source / name).read_bytes()
        assert [content(g) for g in got] == [whole] * 3
        assert all(c.entry == index for g in got for c in g)
    chunks.close()


def test_hosts_that_keep_together_read_and_encode_each_chunk_once(source: Path) -> None:
    tree = scan_tree(str(source))
    chunks = Chunks(tree)
    index = index_of(tree, "big.bin")
    hosts = [chunks.of(index) for _ in range(3)]
    for taken in zip(*hosts, strict=True):  # each host takes chunk k before any takes k+1
        assert len({c.offset for c in taken}) == 1
    assert chunks.encoded == 5  # four chunks and the end


def test_a_file_that_changes_while_hosts_read_it_fails_the_host_given_the_change(source: Path) -> None:
    tree = scan_tree(str(source))
    chunks = Chunks(tree, budget=64 * CHUNK)
    index = index_of(tree, "big.bin")
    ahead, behind = chunks.of(index), chunks.of(index)
    taken = [next(ahead), next(ahead)]
    with open(source / "big.bin", "r+b") as file:  # a change in what no host has read yet
        file.seek(3 * CHUNK)
        file.write(b"changed")
    assert [next(behind), next(behind)] == taken  # from the cache
    with pytest.raises(SyncSourceError, match=r"big\.bin: changed while syncing; every host keeps its previous copy"):
        list(behind)


def sync_to(source: Path, nodes: list[LocalNode], tmp_path: Path) -> None:
    tree = scan_tree(str(source))

    async def go() -> None:
        agents: list[NodeAgent] = []
        try:
            for node in nodes:
                with node.environment():
                    agents.append(await node.open())
            targets = [(a, str(tmp_path / f"host{i}")) for i, a in enumerate(agents)]
            assert (await sync_agents(tree, targets)).same_everywhere
        finally:
            await asyncio.gather(*(a.close() for a in agents))

    asyncio.run(go())


def test_a_sync_to_three_hosts_encodes_each_chunk_once(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded: list[int] = []
    encode = base64.b64encode

    def counted(data: bytes) -> bytes:
        encoded.append(len(data))
        return encode(data)

    monkeypatch.setattr(base64, "b64encode", counted)  # this process only: the agents decode
    nodes = [LocalNode.create() for _ in range(3)]
    try:
        sync_to(source, nodes, tmp_path)
    finally:
        for node in nodes:
            node.close()
    # once for all hosts: as many chunks of content as one host needs, not three times as many
    assert sorted(n for n in encoded if n) == sorted([CHUNK] * 5 + [5, 10])
    for i in range(3):
        assert {p.name: p.stat().st_size for p in (tmp_path / f"host{i}").iterdir() if p.is_file()} == SIZES


def test_a_host_that_took_chunks_from_two_reads_fails_if_either_read_was_not_the_manifest(source: Path) -> None:
    tree = scan_tree(str(source))
    chunks = Chunks(tree, budget=CHUNK)  # room for one chunk: a host one chunk behind reads again
    index = index_of(tree, "big.bin")
    path = source / "big.bin"
    original = path.read_bytes()
    path.write_bytes(b"changed" + original[7:])
    ahead, behind = chunks.of(index), chunks.of(index)
    assert next(ahead) == next(behind)  # the changed first chunk, read once
    path.write_bytes(original)  # changed back: a second read from the start is the manifest's
    with pytest.raises(SyncSourceError, match=r"big\.bin: changed while syncing"):
        list(ahead)  # the first read, at its end
    with pytest.raises(SyncSourceError, match=r"big\.bin: changed while syncing"):
        list(behind)  # the rest from a second read, but its first chunk came from the first
