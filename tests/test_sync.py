"""Sync on the middle layer: the real node agent as local processes, no root, no SSH.

Each "host" is a local agent with its own state directory (where the node keeps the
manifest of its last good sync) syncing to its own directory, so that three of them
stand for three hosts that share nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from local_node import LocalNode

from launcher.errors import JobError
from launcher.sync import tree as tree_module
from launcher.sync.run import SyncReport, SyncTooLargeError, parse_size, prepare_tree, sync_agents
from launcher.sync.tree import SyncSourceError, scan_tree
from launcher.transport.agent import NodeAgent


@pytest.fixture
def nodes() -> Iterator[list[LocalNode]]:
    made = [LocalNode.create() for _ in range(3)]
    yield made
    for node in made:
        node.close()


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def sync(source: Path, nodes: list[LocalNode], dests: list[Path], cache: Path | None = None) -> SyncReport:
    """One sync of ``source`` to each node's own directory, over one agent per node."""
    tree = scan_tree(str(source), cache)

    async def go() -> SyncReport:
        agents: list[NodeAgent] = []
        try:
            for node in nodes:
                with node.environment():  # the agent starts with this node's state dir
                    agents.append(await node.open())
            return await sync_agents(tree, [(a, str(d)) for a, d in zip(agents, dests, strict=True)])
        finally:
            await asyncio.gather(*(a.close() for a in agents))

    return asyncio.run(go())


STATE = ".launcher-sync-state"
"""The destination's hidden state (its record, lock and journal): not part of the tree."""


def listing(root: Path) -> dict[str, str]:
    found = {}
    for directory, dirs, files in os.walk(root):
        if directory == str(root) and STATE in dirs:
            dirs.remove(STATE)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(directory, d))]:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            found[rel] = "-> " + os.readlink(path) if os.path.islink(path) else Path(path).read_bytes().hex()
    return found


# ---------------------------------------------------------------------------- what "my code" is


def test_a_plain_directory_honours_launcherignore_and_never_takes_dot_git(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": "1", "data/x.bin": "2", "m.ckpt": "3", "keep/m.ckpt": "4", ".git/HEAD": "5"})
    write(tmp_path, {".launcherignore": "data/\n*.ckpt\n!keep/m.ckpt\n"})
    names = [e.path for e in scan_tree(str(tmp_path)).entries]
    assert names == [".launcherignore", "a.py", "keep/m.ckpt"]


def test_a_git_tree_is_its_tracked_and_untracked_unignored_files(tmp_path: Path) -> None:
    write(tmp_path, {"a.py": "1", ".gitignore": "*.log\nbuild/\n", "x.log": "2", "build/o": "3", "gone.py": "4"})
    subprocess.run(["git", "-C", str(tmp_path), "init", "-q"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.py", ".gitignore", "gone.py"], check=True)
    (tmp_path / "gone.py").unlink()  # tracked, deleted: not part of the code any more
    write(tmp_path, {"new.py": "5", ".launcherignore": "new.py\n"})
    found = scan_tree(str(tmp_path))
    assert [e.path for e in found.entries] == [".gitignore", ".launcherignore", "a.py"]
    assert found.fingerprint.startswith("git (no commit)")


def test_modes_and_symlinks_are_in_the_manifest_and_a_symlink_out_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"run.sh": "#!/bin/sh\n", "lib/a.py": "1"})
    (tmp_path / "run.sh").chmod(0o750)
    (tmp_path / "alias").symlink_to("lib")
    (tmp_path / "lib" / "up").symlink_to("../run.sh")
    entries = {e.path: e for e in scan_tree(str(tmp_path)).entries}
    assert entries["run.sh"].mode == 0o750
    assert (entries["alias"].kind, entries["alias"].digest) == ("l", "lib")
    assert entries["lib/up"].digest == "../run.sh"
    (tmp_path / "lib" / "out").symlink_to("../../etc")
    with pytest.raises(SyncSourceError, match=r"lib/out: a symlink to \.\./\.\./etc, outside the tree"):
        scan_tree(str(tmp_path))


def test_a_missing_directory_and_a_tree_over_the_limit_are_one_line_each(tmp_path: Path) -> None:
    with pytest.raises(SyncSourceError, match="no such directory"):
        scan_tree(str(tmp_path / "nope"))
    write(tmp_path, {"data/big.bin": b"x" * 5000, "data/more.bin": b"x" * 3000, "a.py": "1"})
    with pytest.raises(SyncTooLargeError) as caught:
        prepare_tree(str(tmp_path), max_bytes=4096)
    assert "refusing to sync 7.8 KiB, more than --sync-max 4.0 KiB; the largest: data/ 7.8 KiB, a.py 1 B" in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("text", "size"), [("1G", 1 << 30), ("500M", 500 << 20), ("2.5k", 2560), ("1GiB", 1 << 30), ("100", 100)]
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_an_unchanged_tree_is_not_hashed_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write(tmp_path / "src", {f"m{i}.py": str(i) for i in range(20)})
    old = 1_600_000_000
    for path in source.iterdir():
        os.utime(path, (old, old))  # not "racy": old enough to be cached
    first = scan_tree(str(source), tmp_path / "cache")
    calls: list[str] = []
    monkeypatch.setattr(tree_module, "hash_file", lambda path: calls.append(path) or "")
    again = scan_tree(str(source), tmp_path / "cache")
    assert calls == [] and again.digest == first.digest
    (source / "m3.py").write_text("changed")
    scan_tree(str(source), tmp_path / "cache")
    assert calls == [str(source / "m3.py")]


# ---------------------------------------------------------------------------- syncing to nodes


def test_a_git_trees_submodules_are_synced_by_the_same_rule(tmp_path: Path) -> None:
    def git(where: Path, *args: str) -> None:
        identity = ["-c", "user.name=t", "-c", "user.email=t@t", "-c", "protocol.file.allow=always"]
        subprocess.run(["git", "-C", str(where), *identity, *args], check=True, capture_output=True)

    library = write(tmp_path / "library", {"lib.py": "1", ".gitignore": "*.tmp\n"})
    git(library, "init", "-q")
    git(library, "add", ".")
    git(library, "commit", "-q", "-m", "lib")
    source = write(tmp_path / "src", {"train.py": "2"})
    git(source, "init", "-q")
    git(source, "add", "train.py")
    git(source, "submodule", "add", "-q", str(library), "vendor/library")
    write(source / "vendor" / "library", {"patched.py": "3", "scratch.tmp": "4"})  # untracked; ignored there
    (source / "to_library").symlink_to("vendor/library")  # a link to a directory stays a link

    found = scan_tree(str(source))

    assert [e.path for e in found.entries] == [
        ".gitmodules",
        "to_library",
        "train.py",
        "vendor/library/.gitignore",
        "vendor/library/lib.py",
        "vendor/library/patched.py",
    ]
    assert found.fingerprint.startswith("git ")


def test_sync_copies_modes_symlinks_and_names_that_are_hard_to_spell(tmp_path: Path, nodes: list[LocalNode]) -> None:
    odd = {"with space.py": "1", 'quote\'s "x".py': "2", "new\nline.py": "3", os.fsdecode(b"\xff\xfe.py"): "4"}
    source = write(tmp_path / "src", {**odd, "bin/run": "#!/bin/sh\n", "empty": "", "big.bin": os.urandom(3 << 20)})
    (source / "bin" / "run").chmod(0o755)
    (source / "link").symlink_to("bin/run")
    dests = [tmp_path / f"host{i}" / "code" for i in range(3)]

    report = sync(source, nodes, dests)

    assert report.same_everywhere and report.files == 8
    for dest in dests:
        assert listing(dest) == listing(source)
        assert stat.S_IMODE((dest / "bin" / "run").stat().st_mode) == 0o755
        assert (dest / "big.bin").stat().st_mtime_ns == (source / "big.bin").stat().st_mtime_ns


def test_a_resync_sends_only_what_changed_and_deletes_only_what_it_put_there(
    tmp_path: Path, nodes: list[LocalNode]
) -> None:
    source = write(tmp_path / "src", {"a.py": "1", "b.py": "2", "pkg/c.py": "3", "pkg/deep/d.py": "4"})
    dests = [tmp_path / f"host{i}" for i in range(3)]
    sync(source, nodes, dests)
    write(dests[0], {"checkpoint.pt": "the job's own"})

    unchanged = sync(source, nodes, dests)
    assert [(h.copied, h.deleted) for h in unchanged.hosts] == [((), ())] * 3

    write(source, {"a.py": "changed"})
    (source / "pkg" / "deep" / "d.py").unlink()
    os.utime(source / "b.py")  # only touched: its content is not sent again
    report = sync(source, nodes, dests)
    assert [(h.copied, h.deleted) for h in report.hosts] == [(("a.py",), ("pkg/deep/d.py",))] * 3
    for dest in dests:
        assert (dest / "a.py").read_text() == "changed"
        assert not (dest / "pkg" / "deep").exists()  # the directory the deletion emptied, too
        assert (dest / "b.py").stat().st_mtime_ns == (source / "b.py").stat().st_mtime_ns
    assert (dests[0] / "checkpoint.pt").read_text() == "the job's own"


def test_a_file_changed_on_a_host_behind_the_syncs_back_is_sent_again(tmp_path: Path, nodes: list[LocalNode]) -> None:
    source = write(tmp_path / "src", {"a.py": "1"})
    dests = [tmp_path / "host0"]
    sync(source, nodes[:1], dests)
    write(dests[0], {"a.py": "edited there"})
    report = sync(source, nodes[:1], dests)
    assert report.hosts[0].copied == ("a.py",)
    assert (dests[0] / "a.py").read_text() == "1"


def test_a_commit_that_fails_on_one_host_leaves_every_host_its_previous_copy(
    tmp_path: Path, nodes: list[LocalNode]
) -> None:
    source = write(tmp_path / "src", {"a.py": "old", "z.py": "old", "run.sh": "old"})
    dests = [tmp_path / f"host{i}" for i in range(3)]
    sync(source, nodes, dests)
    before = [listing(d) for d in dests]
    write(source, {"a.py": "new", "m/inner.py": "new"})
    (source / "z.py").unlink()
    (source / "run.sh").chmod(0o700)
    write(dests[1], {"m": "a file of host1's own where the tree now has a directory"})
    before[1]["m"] = (dests[1] / "m").read_bytes().hex()

    with pytest.raises(JobError) as caught:
        sync(source, nodes, dests)

    assert list(caught.value.errors) == ["localhost"]  # every local agent is "localhost"
    assert "m is in the way" in str(caught.value) and "every host keeps its previous copy" in str(caught.value)
    for dest, was in zip(dests, before, strict=True):
        assert listing(dest) == was
        assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o644
        assert [n for n in os.listdir(dest) if n.startswith(".launcher-sync-")] == [STATE]
    # and the next sync, the obstacle gone, is complete
    (dests[1] / "m").unlink()
    assert sync(source, nodes, dests).same_everywhere


def test_a_full_disk_while_staging_changes_nothing_anywhere(tmp_path: Path, nodes: list[LocalNode]) -> None:
    source = write(tmp_path / "src", {"a.py": "old"})
    dests = [tmp_path / f"host{i}" for i in range(2)]
    sync(source, nodes[:2], dests)
    write(source, {"a.py": "new", "big.bin": os.urandom(300_000)})
    # host1's agent may write no file over 64 KiB: a disk that fills up while it stages
    limited = tmp_path / "limited-python"
    import sys

    limited.write_text(f"#!/bin/sh\nulimit -f 64\ntrap '' XFSZ\nexec {sys.executable} \"$@\"\n")
    limited.chmod(0o755)
    tree = scan_tree(str(source))

    async def go() -> None:
        agents = []
        try:
            with nodes[0].environment():
                agents.append(await nodes[0].open())
            with nodes[1].environment():
                agents.append(await nodes[1].open(python=str(limited)))
            await sync_agents(tree, [(a, str(d)) for a, d in zip(agents, dests, strict=True)])
        finally:
            await asyncio.gather(*(a.close() for a in agents))

    with pytest.raises(JobError, match=r"big\.bin: File too large"):
        asyncio.run(go())
    for dest in dests:
        assert listing(dest) == {"a.py": b"old".hex()}


def test_a_node_with_the_tree_intact_answers_the_digest_alone(tmp_path: Path, nodes: list[LocalNode]) -> None:
    from launcher.protocol.sync import SyncAbort, SyncPlan

    source = write(tmp_path / "src", {"a.py": "1", "pkg/b.py": "2"})
    dest = tmp_path / "host0"
    sync(source, nodes[:1], [dest])
    digest = scan_tree(str(source)).digest

    def ask() -> tuple[bool, list[int]]:
        answer = nodes[0].call(SyncPlan(root=str(dest), token="t", digest=digest))
        nodes[0].call(SyncAbort(token="t"))
        return answer.unknown, answer.needed

    assert ask() == (False, [])
    write(dest, {"pkg/b.py": "edited on the node"})
    assert ask() == (True, [])  # then the launcher sends the whole manifest


def test_a_host_whose_directory_is_the_source_itself_is_left_alone(tmp_path: Path, nodes: list[LocalNode]) -> None:
    source = write(tmp_path / "src", {"a.py": "1", "data/rows.csv": "2"})
    other = tmp_path / "host1"
    sync(source, nodes[:2], [tmp_path / "elsewhere", other])
    write(source, {".launcherignore": "data/\n"})  # now ignored: a copy loses it, the source never

    report = sync(source, nodes[:2], [source, other])

    assert [h.source for h in report.hosts] == [True, False] and report.same_everywhere
    assert (source / "data" / "rows.csv").read_text() == "2"
    assert not (other / "data").exists()
    assert [n for n in os.listdir(source) if n.startswith(".launcher-sync-")] == []
    alone = sync(source, nodes[:1], [source])  # only the source: nothing to do at all
    assert [h.source for h in alone.hosts] == [True] and alone.same_everywhere


@pytest.mark.parametrize(("change", "says"), [("edit", "changed while syncing"), ("remove", "vanished while syncing")])
def test_a_file_that_changes_or_vanishes_while_syncing_fails_it_everywhere(
    tmp_path: Path, nodes: list[LocalNode], change: str, says: str
) -> None:
    source = write(tmp_path / "src", {"a.py": "old", "b.py": "old"})
    dests = [tmp_path / "host0", tmp_path / "host1"]
    sync(source, nodes[:2], dests)
    write(source, {"a.py": "new", "b.py": "new"})
    tree = scan_tree(str(source))  # what the sync will send...
    if change == "edit":  # ...and then the file changes under it (same size)
        write(source, {"b.py": "NEW"})
    else:
        (source / "b.py").unlink()

    async def go() -> None:
        agents = []
        try:
            for node in nodes[:2]:
                with node.environment():
                    agents.append(await node.open())
            await sync_agents(tree, [(a, str(d)) for a, d in zip(agents, dests, strict=True)])
        finally:
            await asyncio.gather(*(a.close() for a in agents))

    with pytest.raises(SyncSourceError, match=f"b.py: {says}; every host keeps its previous copy"):
        asyncio.run(go())
    for dest in dests:
        assert listing(dest) == {"a.py": b"old".hex(), "b.py": b"old".hex()}


# ---------------------------------------------------------------------------- directories hosts share


@pytest.fixture
def four() -> Iterator[list[LocalNode]]:
    made = [LocalNode.create() for _ in range(4)]
    yield made
    for node in made:
        node.close()


def count_requests(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Every request any agent is sent from now on, by its op."""
    counts: dict[str, int] = {}
    call = NodeAgent.call

    async def counted(self: NodeAgent, request: Any, timeout: float | None = 60.0) -> Any:
        counts[request.op] = counts.get(request.op, 0) + 1
        return await call(self, request, timeout)

    monkeypatch.setattr(NodeAgent, "call", counted)
    return counts


def test_hosts_that_share_a_directory_write_it_through_the_first_of_them(tmp_path: Path, four: list[LocalNode]) -> None:
    # Before: every host committed into the same tree at once ("a/b/f0.py: No such file or directory").
    source = write(tmp_path / "src", {f"a/b/f{i}.py": str(i) for i in range(1500)})
    for attempt in range(3):
        shared = tmp_path / f"scratch{attempt}" / "proj"
        report = sync(source, four, [shared] * 4)
        assert report.same_everywhere
        assert [h.writer for h in report.hosts] == [None, "localhost", "localhost", "localhost"]
        assert listing(shared) == listing(source)
    own = tmp_path / "own"
    mixed = sync(source, four[:3], [own, tmp_path / "scratch0" / "proj", own])
    assert [h.writer for h in mixed.hosts] == [None, None, "localhost"] and mixed.same_everywhere
    assert listing(own) == listing(source)


def test_a_resync_into_a_shared_directory_carries_a_change_and_a_deletion_and_then_nothing(
    tmp_path: Path, four: list[LocalNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write(tmp_path / "src", {"a.py": "1", "gone.py": "2", "pkg/c.py": "3"})
    shared = tmp_path / "scratch"
    sync(source, four[:3], [shared] * 3)
    write(shared, {"out.txt": "the job's own"})
    write(source, {"a.py": "changed"})
    (source / "gone.py").unlink()

    report = sync(source, four[:3], [shared] * 3)

    assert [(h.copied, h.deleted) for h in report.hosts] == [(("a.py",), ("gone.py",))] * 3
    assert [h.writer for h in report.hosts] == [None, "localhost", "localhost"] and report.same_everywhere
    assert listing(shared) == {**listing(source), "out.txt": b"the job's own".hex()}
    requests = count_requests(monkeypatch)
    again = sync(source, four[:3], [shared] * 3)
    assert again.same_everywhere and [h.copied for h in again.hosts] == [()] * 3
    assert requests == {"sync_plan": 3, "sync_abort": 3}  # one round trip to plan, one to close


def test_a_second_sync_into_a_directory_being_synced_is_refused_in_one_line(
    tmp_path: Path, four: list[LocalNode]
) -> None:
    from launcher.protocol.sync import SyncAbort, SyncPlan

    source = write(tmp_path / "src", {"a.py": "1"})
    shared = tmp_path / "scratch"
    tree = scan_tree(str(source))

    async def go() -> None:
        agents: list[NodeAgent] = []
        try:
            for node in four[:3]:
                with node.environment():
                    agents.append(await node.open())
            holder = SyncPlan(root=str(shared), token="other", digest=tree.digest, lock=True)
            await agents[0].call(holder)  # another sync holds the directory
            with pytest.raises(JobError) as caught:
                await sync_agents(tree, [(a, str(shared)) for a in agents[1:]])
            assert str(caught.value) == (
                f"sync failed, nothing changed (localhost: another sync into {shared} is under way (lock held);"
                " try again later)"
            )
            assert not (shared / "a.py").exists()
            await agents[0].call(SyncAbort(token="other"))
            assert (await sync_agents(tree, [(a, str(shared)) for a in agents[1:]])).same_everywhere
        finally:
            await asyncio.gather(*(a.close() for a in agents))

    asyncio.run(go())
    assert listing(shared) == listing(source)


def test_two_syncs_at_once_into_one_directory_never_mix_their_trees(tmp_path: Path, four: list[LocalNode]) -> None:
    one = write(tmp_path / "one", {f"m{i}.py": "one" for i in range(300)})
    two = write(tmp_path / "two", {**{f"m{i}.py": "two" for i in range(300)}, "only/two.py": "2"})
    trees = [scan_tree(str(one)), scan_tree(str(two))]
    shared = tmp_path / "scratch"

    async def go() -> list[object]:
        agents: list[NodeAgent] = []
        try:
            for node in four:
                with node.environment():
                    agents.append(await node.open())
            syncs = [sync_agents(t, [(a, str(shared)) for a in agents[2 * i : 2 * i + 2]]) for i, t in enumerate(trees)]
            return await asyncio.gather(*syncs, return_exceptions=True)
        finally:
            await asyncio.gather(*(a.close() for a in agents))

    for _ in range(3):
        results = asyncio.run(go())
        for result in results:
            assert isinstance(result, SyncReport) or "(lock held)" in str(result), result
        assert listing(shared) in (listing(one), listing(two))


def test_a_commit_whose_finish_never_came_is_rolled_back_at_the_next_contact(
    tmp_path: Path, four: list[LocalNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher.protocol.sync import SyncPlan
    from launcher.sync import commit as sync_commit

    source = write(tmp_path / "src", {"a.py": "old", "gone.py": "old", "pkg/b.py": "old"})
    shared = tmp_path / "scratch"
    sync(source, four[:2], [shared] * 2)
    before, old = listing(shared), scan_tree(str(source)).digest
    write(source, {"a.py": "new", "new/c.py": "new"})
    (source / "gone.py").unlink()
    finish = sync_commit.finish

    async def writer_lost_before_finish(agents: list[NodeAgent], token: str) -> None:
        assert agents[0].hello is not None
        os.kill(agents[0].hello.pid, signal.SIGKILL)  # no chance to undo anything itself
        await finish(agents, token)

    monkeypatch.setattr(sync_commit, "finish", writer_lost_before_finish)
    with pytest.raises(JobError, match="sync not finished on every host"):
        sync(source, four[:2], [shared] * 2)
    monkeypatch.undo()
    assert (shared / STATE / "journal").exists() and (shared / "new" / "c.py").exists()

    # The next contact, by either host: its plan rolls the commit back before anything else.
    needs = four[1].call(SyncPlan(root=str(shared), token="next", digest=old, probe=True))
    assert (needs.unknown, needs.needed) == (False, [])
    assert listing(shared) == before and not (shared / STATE / "journal").exists()
    assert [n for n in os.listdir(shared) if n.startswith(".launcher-sync-")] == [STATE]
    assert sync(source, four[:2], [shared] * 2).same_everywhere and listing(shared) == listing(source)


def test_an_agent_whose_connection_ends_after_its_commit_puts_the_previous_copy_back(
    tmp_path: Path, nodes: list[LocalNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    from launcher.sync import commit as sync_commit

    source = write(tmp_path / "src", {"a.py": "old", "gone.py": "old"})
    dests = [tmp_path / "host0", tmp_path / "host1"]
    sync(source, nodes[:2], dests)
    before = listing(dests[0])
    write(source, {"a.py": "new", "m/c.py": "new"})
    (source / "gone.py").unlink()
    finish = sync_commit.finish

    async def hang_up_on_host0(agents: list[NodeAgent], token: str) -> None:
        await agents[0].close()  # EOF on the agent's stdin: the connection is gone
        await finish(agents, token)

    monkeypatch.setattr(sync_commit, "finish", hang_up_on_host0)
    with pytest.raises(JobError, match="sync not finished on every host") as caught:
        sync(source, nodes[:2], dests)
    assert list(caught.value.errors) == ["localhost"]
    assert listing(dests[0]) == before and not (dests[0] / STATE / "journal").exists()  # undone by itself
    assert listing(dests[1]) == listing(source)
    monkeypatch.undo()
    assert sync(source, nodes[:2], dests).same_everywhere
    assert listing(dests[0]) == listing(dests[1]) == listing(source)
