"""Stacks read (pure): py-spy's JSON and faulthandler's text -> threads of frames, the main
thread's place in user code, and the text saved in the run directory."""

from __future__ import annotations

import os
import re
import sysconfig
from typing import Any

from launcher.protocol.stack import Frame

Thread = tuple[str, list[Frame]]
"""A thread's name and its frames, innermost first."""

_FAULTHANDLER_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-f]+)")
_FAULTHANDLER_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')
_PACKAGES = re.compile(r"/(?:site|dist)-packages/")


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # launcher's own
    return tuple(sorted(r.rstrip("/") + "/" for r in roots))


LIBRARY_ROOTS = _library_roots()


def threads_of_py_spy(data: Any) -> list[Thread]:
    """``py-spy dump --json``: a list of threads, each with its frames innermost first."""
    threads = []
    for thread in data if isinstance(data, list) else []:
        frames = [
            Frame(function=str(f.get("name", "?")), file=str(f.get("filename", "")), line=f.get("line") or None)
            for f in thread.get("frames", [])
        ]
        threads.append((str(thread.get("thread_name") or thread.get("thread_id")), frames))
    return threads


def threads_of_faulthandler(text: str) -> list[Thread]:
    """``faulthandler.dump_traceback(all_threads=True)``'s text: frames are innermost first."""
    threads: list[Thread] = []
    for line in text.splitlines():
        head = _FAULTHANDLER_THREAD.match(line)
        if head:
            threads.append((head.group(1), []))
            continue
        frame = _FAULTHANDLER_FRAME.match(line)
        if frame and threads:
            threads[-1][1].append(Frame(function=frame.group(3), file=frame.group(1), line=int(frame.group(2))))
    return threads


def main_thread(threads: list[Thread]) -> list[Frame]:
    """The main thread's frames: named so by py-spy, else the one not started by ``threading``."""
    for name, frames in threads:
        if name == "MainThread":
            return frames
    for _, frames in threads:
        if frames and not frames[-1].file.endswith("threading.py"):
            return frames
    return threads[0][1] if threads else []


def is_library(frame: Frame) -> bool:
    """In the standard library, an installed package, launcher itself, or native code."""
    path = frame.file
    if not path.endswith(".py"):
        return True
    return path.startswith("<") or bool(_PACKAGES.search(path)) or path.startswith(LIBRARY_ROOTS)


def place(frames: list[Frame]) -> tuple[Frame | None, Frame | None]:
    """The innermost frame in user code, and the library frame under it: of the library
    entered from there, its innermost Python frame in that same package (``all_reduce`` in
    ``distributed_c10d.py`` rather than torch's logging wrapper around it)."""
    for index, frame in enumerate(frames):
        if is_library(frame):
            continue
        user = short(frame)
        if index == 0:
            return user, None
        entered = frames[index - 1]
        package = _package(entered.file)
        library = entered
        for inner in reversed(frames[: index - 1]):
            if _package(inner.file) != package or not inner.file.endswith(".py"):
                break
            library = inner
        return user, short(library)
    innermost = frames[0] if frames else None
    return None, short(innermost) if innermost else None


def short(frame: Frame) -> Frame:
    """The file as a reader knows it: ``torch/distributed/x.py``, ``threading.py``, ``train.py``."""
    path = frame.file
    found = _PACKAGES.search(path)
    if found:
        path = path[found.end() :]
    else:
        root = next((r for r in LIBRARY_ROOTS if path.startswith(r)), None)
        path = path[len(root) :] if root else os.path.basename(path)
    return Frame(frame.function, path, frame.line)


def _package(path: str) -> str:
    found = _PACKAGES.search(path)
    if found:
        return path[found.end() :].split("/", 1)[0]
    return "" if path.endswith(".py") else "<native>"


def render_threads(rank: int, pid: int, method: str, threads: list[Thread]) -> str:
    """The full stacks, as saved in ``rank-<R>.txt``: most recent call first, as Python does."""
    lines = [f"rank {rank}, pid {pid}, taken with {method}"]
    for name, frames in threads:
        lines.append("")
        lines.append(f"Thread {name} (most recent call first):")
        for frame in frames:
            where = f"{frame.file}, line {frame.line}" if frame.line is not None else frame.file
            lines.append(f"  {frame.function} ({where})")
    return "\n".join(lines) + "\n"
