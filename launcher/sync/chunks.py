"""A tree's content in chunks, each read, hashed and base64-encoded once for all hosts.

Hosts that lack the same files ask for the same chunks at about the same time: the first to
ask reads the chunk, hashing its file as it goes, and the others take it from a cache of
``budget`` bytes of base64 (the least recently used leave first). A host that falls so far
behind that its chunk has left reads the file again. Each read of a file from its start (a
"pass") is checked against the manifest at its end, and a host is given a file's last chunk
only once every pass it took a chunk from has passed that check: what it sent is the
manifest's content, and a file that changed or vanished since the scan fails the sync.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from launcher.protocol.sync import SyncChunk, content_hasher
from launcher.sync.tree import SyncSourceError, Tree

CHUNK = 1 << 20
"""Bytes of one chunk (base64 in JSON makes 4/3 of it)."""
BUDGET = 64 << 20
"""Bytes of base64 kept for the hosts behind: a few windows of requests (``send.py``)."""


class _Pass:
    """One read of a file from its start: the file, the hash so far, where it is."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0
        self.digest = content_hasher()
        self.checked = False
        """It reached the file's end and the file was the manifest's."""
        self.file: BinaryIO | None = _opened(path)

    def read(self) -> bytes:
        assert self.file is not None, "a pass reads until its end, then no more"
        try:
            data = self.file.read(CHUNK)
        except OSError as exc:
            raise SyncSourceError(self.path, f"cannot read: {exc.strerror}") from None
        self.digest.update(data)
        self.offset += len(data)
        return data

    def end(self, size: int, digest: str) -> None:
        self.close()
        self.checked = self.offset == size and self.digest.hexdigest() == digest
        if not self.checked:
            raise self.changed()

    def changed(self) -> SyncSourceError:
        return SyncSourceError(self.path, "changed while syncing; every host keeps its previous copy (sync again)")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _Cached(NamedTuple):
    chunk: SyncChunk
    size: int
    """Bytes of content (0: the file's end)."""
    source: _Pass


class Chunks:
    """The chunks of ``tree``'s files, shared by every host that sends them."""

    def __init__(self, tree: Tree, budget: int = BUDGET) -> None:
        self.tree = tree
        self.budget = budget
        self.encoded = 0
        """Chunks read from the disk and encoded (the others came from the cache)."""
        self._cache: OrderedDict[tuple[int, int], _Cached] = OrderedDict()
        self._cached = 0  # bytes of base64 in the cache
        self._passes: dict[int, list[_Pass]] = {}  # each file's passes not at their end yet

    def of(self, index: int) -> Iterator[SyncChunk]:
        """Entry ``index``'s chunks (one empty chunk for an empty file); a SyncSourceError if
        the file is not the manifest's any more."""
        drawn: set[_Pass] = set()
        offset = 0
        while True:
            cached = self._take(index, offset)
            drawn.add(cached.source)
            if cached.size == 0:
                for source in drawn:  # several: rare, a host that fell behind
                    while source.file is not None:
                        self._advance(index, source)
                    if not source.checked:
                        raise source.changed()
                if offset == 0:
                    yield cached.chunk
                return
            yield cached.chunk
            offset += cached.size

    def close(self) -> None:
        """Close the files of passes left unfinished (the sync failed)."""
        for passes in self._passes.values():
            for unfinished in passes:
                unfinished.close()
        self._passes.clear()

    def _take(self, index: int, offset: int) -> _Cached:
        cached = self._cache.get((index, offset))
        if cached is not None:
            self._cache.move_to_end((index, offset))
            return cached
        passes = self._passes.setdefault(index, [])
        here = next((p for p in passes if p.offset == offset), None)
        if here is None:  # a new read of the file, up to where this host is
            here = _Pass(os.path.join(self.tree.root, self.tree.entries[index].path))
            passes.append(here)
            while here.offset < offset and here.read():
                pass
        return self._advance(index, here)

    def _advance(self, index: int, source: _Pass) -> _Cached:
        """The next chunk of ``source``, read, encoded and cached; at the file's end, checked."""
        offset = source.offset
        data = source.read()
        self.encoded += 1
        if not data:
            self._passes[index].remove(source)
            entry = self.tree.entries[index]
            source.end(entry.size, entry.digest)
        cached = _Cached(SyncChunk(index, offset, base64.b64encode(data).decode("ascii")), len(data), source)
        self._cache[index, offset] = cached
        self._cached += len(cached.chunk.data)
        while self._cached > self.budget and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= len(dropped.chunk.data)
        return cached


def _opened(path: str) -> BinaryIO:
    try:
        return open(path, "rb")  # closed at the pass's end, or by Chunks.close()
    except FileNotFoundError:
        raise SyncSourceError(path, "vanished while syncing; every host keeps its previous copy") from None
    except OSError as exc:
        raise SyncSourceError(path, f"cannot read: {exc.strerror}") from None
