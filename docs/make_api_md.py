"""Write docs/api.md, the Python API reference, from the docstrings of ``launcher.__all__``.

    python3 docs/make_api_md.py            # rewrite docs/api.md
    python3 docs/make_api_md.py --check    # exit 1 if docs/api.md is not what it would write

Every public name gets a section (``tests/test_api_docs.py`` checks that), in the groups of
``GROUPS``; a name in no group lands under "Other".
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import launcher  # noqa: E402 - from this checkout

OUT = REPO / "docs" / "api.md"

INTRO = """# Python API

Everything here is importable from `launcher` (`launcher.__all__`). The blocking calls
(`launch`, `run`, `submit`, the methods of `Job`) work in a script and inside a running
event loop (a Jupyter cell); async code can await the coroutines under "Async building
blocks" instead. Generated from the docstrings by `docs/make_api_md.py`.

```python
import launcher

# A script on every host: follow it, wait for it.
job = launcher.launch("train.py", "--lr", "3e-4", hosts="hosts", nproc_per_node=4)
for line in job.logs(follow=True):
    print(f"[{line.host} rank {line.rank}] {line.text}")
result = job.wait()           # raises launcher.JobFailed: host, rank, exception, traceback

# A function on every rank: each global rank's return value.
def step(scale):
    ctx = launcher.context()  # rank, local_rank, world_size, host, device, is_main
    return ctx.rank * scale

values = launcher.run(step, 10, hosts="hosts", nproc_per_node=2)   # {0: 0, 1: 10, ...}
job = launcher.submit(step, 10, hosts="hosts")                       # submitit's shape
values = job.result()
```

Options: `launch`, `run` and `submit` take every keyword of `make_spec` (the same checks
as `launcher launch`'s flags, environment forwarding included): `include`, `exclude`,
`name`, `assignments` (`KEY=VALUE` strings), `env_files`, `forward_env`, `python`, `cwd`,
`rdzv_port`, `nnodes`, `max_restarts`, `torchrun_args`, `force`, `teardown`,
`connect_timeout`, `max_parallel`, and more as `make_spec` grows.

`run`/`submit` limits: the function and its arguments are pickled with cloudpickle (a
function of `__main__` travels whole; one of a module must be importable on the nodes);
the pickled call and each rank's pickled return value are at most 8 MiB.
"""

GROUPS: list[tuple[str, list[str]]] = [
    ("Launching and waiting", ["launch", "run", "submit", "Job", "jobs", "JobResult", "context", "RunContext"]),
    (
        "Specs and hosts",
        ["make_spec", "LaunchSpec", "NodePlan", "dry_run", "Host", "parse_hosts_file", "resolve_hosts"],
    ),
    (
        "Async building blocks",
        [
            "launch_job",
            "job_status",
            "wait_for_end",
            "read_logs",
            "follow_logs",
            "kill_job",
            "kill_all_jobs",
            "SshOptions",
        ],
    ),
    ("Records of jobs", ["JobRecord", "load_record", "latest_record", "all_records"]),
    ("Status and logs", ["JobStatus", "HostStatus", "RankStatus", "RootCause", "HostKill", "LogLine"]),
]


def render() -> str:
    names = [n for n in launcher.__all__ if n != "__version__"]
    grouped = {name for _, members in GROUPS for name in members}
    errors = [n for n in names if n not in grouped and _is_error(n)]
    other = [n for n in names if n not in grouped and n not in errors]
    parts = [INTRO]
    for title, members in [*GROUPS, ("Errors", errors), ("Other", other)]:
        if not members:
            continue
        parts.append(f"\n## {title}\n")
        if title == "Errors":
            parts.append(_error_tree())
        parts.extend(_section(name) for name in members)
    parts.append(f"\n`launcher.__version__` is `{launcher.__version__}`.\n")
    return "".join(parts)


def _is_error(name: str) -> bool:
    value = getattr(launcher, name)
    return inspect.isclass(value) and issubclass(value, BaseException)


def _error_tree() -> str:
    doc = inspect.getdoc(launcher.LauncherError.__module__ and sys.modules[launcher.LauncherError.__module__]) or ""
    tree = doc.split("::", 1)[1] if "::" in doc else ""
    return f"\n```\n{inspect.cleandoc(tree)}\n```\n" if tree else ""


def _section(name: str) -> str:
    value = getattr(launcher, name)
    kind = "class" if inspect.isclass(value) else "function" if callable(value) else "value"
    head = f"\n### `{name}{_signature(value) if kind == 'function' else ''}`\n"
    body = [head, f"\n*{kind}*, from `{value.__module__}`\n\n{inspect.getdoc(value) or ''}\n"]
    if kind == "class":
        body.extend(_members(value))
    return "".join(body)


def _members(cls: type) -> list[str]:
    lines: list[str] = []
    if dataclasses.is_dataclass(cls):
        fields = ", ".join(f"`{f.name}`" for f in dataclasses.fields(cls))
        lines.append(f"\nFields: {fields}.\n")
    for member, value in vars(cls).items():
        if member.startswith("_") or issubclass(cls, BaseException):
            continue
        target: Any = value.__func__ if isinstance(value, classmethod | staticmethod) else value
        doc = inspect.getdoc(target.fget if isinstance(target, property) else target)
        if not doc or not (callable(target) or isinstance(target, property)):
            continue
        signature = "" if isinstance(target, property) else _signature(target, method=True)
        doc = doc.replace("\n", "\n  ")
        lines.append(f"\n- `{cls.__name__}.{member}{signature}`: {doc}\n")
    return lines


class _Text:
    """An annotation as written (they are strings under ``from __future__ import annotations``)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _signature(value: Any, method: bool = False) -> str:
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return "(...)"
    params = list(signature.parameters.values())[1 if method else 0 :]
    params = [p.replace(annotation=_Text(p.annotation)) if isinstance(p.annotation, str) else p for p in params]
    returns = signature.return_annotation
    return str(
        signature.replace(parameters=params, return_annotation=_Text(returns) if isinstance(returns, str) else returns)
    )


def main() -> int:
    text = render()
    if sys.argv[1:] == ["--check"]:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python3 docs/make_api_md.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
