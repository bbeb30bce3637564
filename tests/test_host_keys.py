"""Host keys against an in-process asyncssh server: an unknown host and a changed key are
both refused, each with its own advice (a changed key is never to be trusted with ssh-keyscan)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launcher.errors import HostKeyError
from launcher.hosts.files import Host
from launcher.transport.agent import SshOptions, connect
from launcher.transport.ssh_library import asyncssh_module

asyncssh = asyncssh_module()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A HOME of its own: asyncssh reads ~/.ssh/config and ~/.ssh/known_hosts there."""
    (tmp_path / ".ssh").mkdir(mode=0o700)
    (tmp_path / ".ssh" / "config").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path))
    yield tmp_path


async def _refusal(home: Path, known: Any | None) -> tuple[HostKeyError, int]:
    """The error of a connection to a fresh server, and its port; ``known`` is the key
    known_hosts holds for it (None: the host is not in known_hosts)."""
    served = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[served], reuse_address=True)
    try:
        port = server.sockets[0].getsockname()[1]
        lines = [f"[127.0.0.1]:{port} {known.export_public_key().decode().strip()}\n"] if known is not None else []
        lines.append(f"[elsewhere]:{port} {served.export_public_key().decode().strip()}\n")
        (home / ".ssh" / "known_hosts").write_text("".join(lines))
        with pytest.raises(HostKeyError) as refused:
            await connect(Host("127.0.0.1", port=port), SshOptions(connect_timeout=5, retries=0))
        return refused.value, port
    finally:
        server.close()
        await server.wait_closed()


def test_a_changed_host_key_says_so_and_how_to_remove_the_old_one(home: Path) -> None:
    error, port = asyncio.run(_refusal(home, known=asyncssh.generate_private_key("ssh-ed25519")))
    assert str(error) == (
        f"[127.0.0.1]:{port}: the host key changed (it is not the one in known_hosts): possible spoofing;"
        f" if the host was reinstalled, remove its old key with `ssh-keygen -R '[127.0.0.1]:{port}'`"
    )


def test_an_unknown_host_keeps_its_advice(home: Path) -> None:
    error, _ = asyncio.run(_refusal(home, known=None))
    assert "not in known_hosts" in str(error) and "ssh-keyscan" in str(error), error
    assert "changed" not in str(error)
