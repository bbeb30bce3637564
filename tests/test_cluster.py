"""The test cluster itself: real sshd in namespaces, isolated hosts, nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest
from cluster import REGISTRY_DIR, REPO, USER_HOMES, Cluster, ClusterError, TestHost, start_cluster
from cluster_user import paths_to_search

pytestmark = pytest.mark.e2e


def ssh(cluster: Cluster, host: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(cluster.ssh_config), "-o", "BatchMode=yes", host, command],
        env=cluster.env(),
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def test_openssh_runs_hostname_on_h1(cluster: Cluster) -> None:
    result = ssh(cluster, "h1", "hostname")

    assert result.returncode == 0, result.stderr
    assert result.stdout == "h1\n"


def test_asyncssh_logs_in_with_only_home_set(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the launcher relies on: ~/.ssh/config, known_hosts and the key, from HOME alone.
    monkeypatch.setenv("HOME", str(cluster.home))

    async def hostname_and_address() -> str:
        async with asyncssh.connect("h2") as conn:
            command = "hostname; python3 -c 'import socket; print(socket.gethostbyname(socket.gethostname()))'"
            result = await conn.run(command, check=True, timeout=20)
            return str(result.stdout)

    assert asyncio.run(hostname_and_address()).split() == ["h2", cluster.hosts[2].address]


def test_each_host_sees_only_its_own_processes(cluster: Cluster) -> None:
    for host in cluster.hosts:
        processes = host.processes()
        command_lines = [command for _, command in processes]
        assert os.getpid() not in [pid for pid, _ in processes]
        assert any(f"/{host.name}.conf" in command for command in command_lines), command_lines
        assert not any(f"/{other.name}.conf" in c for other in cluster.hosts if other != host for c in command_lines)

        inside = host.run(["ps", "-e", "-o", "pid=,comm="])
        assert inside.returncode == 0, inside.stderr
        pid_1 = inside.stdout.split()[:2]
        assert pid_1 == ["1", "sshd"]
        # sshd, maybe a probe's preauth child, nsenter and ps: nothing of the root namespace.
        assert len(inside.stdout.splitlines()) < 10, inside.stdout


def test_tmp_is_private_to_each_host(cluster: Cluster) -> None:
    h0, h1 = cluster.hosts[0], cluster.hosts[1]
    marker = f"private-{os.getpid()}"

    assert h0.run(["sh", "-c", f"echo secret > /tmp/{marker}"]).returncode == 0

    assert h0.run(["cat", f"/tmp/{marker}"]).stdout == "secret\n"
    assert h1.run(["test", "-e", f"/tmp/{marker}"]).returncode == 1
    assert not Path("/tmp", marker).exists()
    # ...while the workdir (under /tmp here) is shared, like an NFS home.
    assert h1.run(["test", "-d", str(cluster.node_state_dir)]).returncode == 0


def test_close_leaves_nothing_behind(tmp_path: Path) -> None:
    small = start_cluster(2, tmp_path)
    hosts = list(small.hosts)
    assert all(host.processes() for host in hosts)

    small.close()
    small.close()  # idempotent

    assert_gone(tmp_path, small.token, hosts)
    assert list(tmp_path.iterdir()) == []


def test_checkout_and_venv_under_tmp_are_seen_by_every_host(tmp_path: Path) -> None:
    # A checkout and a virtual environment under /tmp, which each host replaces with its
    # own: the venv's .pth points at the checkout, as an editable install would.
    checkout, venv = tmp_path / "checkout", tmp_path / "venv"
    shutil.copytree(REPO / "launcher", checkout / "launcher", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "checkout.pth").write_text(f"{checkout}\n")
    (tmp_path / "elsewhere").mkdir()

    helper = subprocess.run(
        [str(venv / "bin" / "python3"), "-c", FROM_THE_VENV, str(tmp_path / "cluster"), str(checkout)],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert helper.returncode == 0, helper.stderr
    seen = json.loads(helper.stdout)
    # The venv's python runs there, imports the checkout's launcher, and sees no more of /tmp.
    expected = ["0", str(venv), str(checkout / "launcher" / "__init__.py"), "elsewhere:1"]
    assert seen == {"h0": expected, "h1": expected}


FROM_THE_VENV = """
import json, sys
from pathlib import Path
from cluster import start_cluster

workdir, checkout = map(Path, sys.argv[1:])
with start_cluster(2, workdir, repo=checkout) as cluster:
    seen = {}
    for host in cluster.hosts:
        imported = host.run([sys.executable, "-c", "import launcher, sys; print(sys.prefix, launcher.__file__)"])
        elsewhere = host.run(["test", "-e", str(workdir.parent / "elsewhere")]).returncode
        seen[host.name] = [str(imported.returncode), *imported.stdout.split(), imported.stderr, f"elsewhere:{elsewhere}"]
print(json.dumps({name: [part for part in parts if part] for name, parts in seen.items()}))
"""


def test_checkout_that_is_tmp_itself_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ClusterError) as refused:
        start_cluster(1, tmp_path / "cluster", repo=Path("/tmp"))

    assert str(refused.value).startswith("the checkout is /tmp itself, which each host of the test cluster replaces")
    assert "move it into a directory of its own" in str(refused.value)
    assert "\n" not in str(refused.value)
    assert list(tmp_path.iterdir()) == []


def test_second_user_logs_in_with_its_own_key_and_leaves_nothing_behind(tmp_path: Path) -> None:
    modes = modes_on_the_way()
    small = start_cluster(2, tmp_path, second_user=True)
    hosts = list(small.hosts)
    try:
        user = small.user
        assert user is not None
        ssh_as_user = ["ssh", "-F", str(user.ssh_config), "-o", "BatchMode=yes"]
        login = user.run([*ssh_as_user, "h1", "id -un; echo $HOME; echo state=$XDG_STATE_HOME"])
        user_key_as_root = user.run([*ssh_as_user, "-l", "root", "h1", "true"])
        root_key_as_user = subprocess.run(
            ["ssh", "-F", str(small.ssh_config), "-o", "BatchMode=yes", "-l", user.name, "h1", "true"],
            env=small.env(),
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        python = user.run([sys.executable, "-c", "import launcher"], cwd=REPO)
        # What sshd's StrictModes asks: the user's home, .ssh and key files are its own, and
        # neither its group nor others may write them; the private ones only it reads.
        files = [user.home, user.ssh_dir, *user.ssh_dir.iterdir()]
        owners = {path.name: path.stat().st_uid for path in files}
        writable = [path.name for path in files if path.stat().st_mode & 0o022]
        private = {
            path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files if not path.name.endswith(".pub")
        }
    finally:
        small.close()

    assert login.returncode == 0, login.stderr
    assert login.stdout.splitlines() == [user.name, str(user.home), "state="]
    assert user_key_as_root.returncode == 255 and "Permission denied" in user_key_as_root.stderr
    assert root_key_as_user.returncode == 255 and "Permission denied" in root_key_as_user.stderr
    assert python.returncode == 0, python.stderr
    assert set(owners.values()) == {user.uid}
    assert writable == []
    assert private == dict.fromkeys(private, "0o600") | {
        user.home.name: "0o700",
        ".ssh": "0o700",
        "known_hosts": "0o644",
    }
    with pytest.raises(KeyError):
        pwd.getpwnam(user.name)
    assert not user.home.exists()
    assert modes_on_the_way() == modes
    assert_gone(tmp_path, small.token, hosts)
    assert list(tmp_path.iterdir()) == []


def modes_on_the_way() -> dict[str, int]:
    """The mode of each directory that a second user may be given search permission on."""
    directories = {d for path in paths_to_search(REPO, USER_HOMES / "anyone") for d in [path, *path.parents]}
    return {str(d): d.stat().st_mode for d in directories if d.is_dir()}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"networks": 2, "isolate_first_network": True},
        {"bastion": True, "shared_disk": False},
        {"second_user": True},
    ],
    ids=["default", "two-networks", "bastion-no-shared-disk", "second-user"],
)
def test_stale_cluster_of_a_crashed_run_is_removed(tmp_path: Path, options: dict[str, object]) -> None:
    modes = modes_on_the_way()
    # A child process starts a cluster and dies without closing it. The helper is a child
    # subreaper, so the orphaned hosts' processes are reaped rather than left as zombies.
    helper = subprocess.run(
        [sys.executable, "-c", CRASH_THEN_CLEAN, str(tmp_path), json.dumps(options)],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert helper.returncode == 0, helper.stderr
    report = json.loads(helper.stdout)

    assert report["token"] in report["removed"]
    hosts = [TestHost(**host) for host in report["hosts"]]
    assert_gone(tmp_path, report["token"], hosts)
    assert list(tmp_path.iterdir()) == []
    if report["user"] is not None:
        with pytest.raises(KeyError):
            pwd.getpwnam(report["user"])
        assert not (USER_HOMES / report["user"]).exists()
    assert modes_on_the_way() == modes


CRASH_THEN_CLEAN = """
import ctypes, dataclasses, json, os, sys
from pathlib import Path
from cluster import remove_stale_clusters, start_cluster

PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
read_end, write_end = os.pipe()
creator = os.fork()
if creator == 0:
    cluster = start_cluster(1, Path(sys.argv[1]), **json.loads(sys.argv[2]))
    hosts = [dataclasses.asdict(host) for host in [*cluster.hosts, *filter(None, [cluster.bastion])]]
    user = cluster.user.name if cluster.user is not None else None
    os.write(write_end, json.dumps({"hosts": hosts, "token": cluster.token, "user": user}).encode())
    os._exit(1)  # crash: no close()
os.close(write_end)
report = json.loads(os.fdopen(read_end).read())
os.waitpid(creator, 0)
report["removed"] = remove_stale_clusters()
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
print(json.dumps(report))
"""


def assert_gone(workdir: Path, token: str, hosts: list[TestHost]) -> None:
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    link_names = {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    for host in hosts:
        assert host.netns not in namespaces.split()
        assert not set(host.links) & link_names
        assert host.processes() == []
    assert not any(token in name for name in link_names)  # the bridges
    routes = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True, check=True).stdout
    assert token not in routes
    # Every process a cluster starts (unshare, sshd) names a file of its workdir.
    assert [command for command in all_command_lines() if str(workdir) in command] == []
    assert not (REGISTRY_DIR / f"{token}.json").exists()


def all_command_lines() -> list[str]:
    command_lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command_lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue
    return command_lines
