"""The NCCL version doctor reports, read without importing torch: torch's own pin of the
``nvidia-nccl-cu*`` wheel, else ``ncclGetVersion`` of the library (where pip puts it,
``site-packages/nvidia/nccl/lib``, then ``torch/lib``), never a file name's "2"."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from launcher.node import doctor as node_doctor

# torch 2.5.1's METADATA (pypi.org/project/torch/2.5.1, Requires-Dist), and one without the pin
# (an NGC or conda build, whose NCCL is not a wheel).
TORCH_251 = [
    'nvidia-cudnn-cu12==9.1.0.70; platform_system == "Linux" and platform_machine == "x86_64"',
    'nvidia-nccl-cu12==2.21.5; platform_system == "Linux" and platform_machine == "x86_64"',
    'nvidia-nvtx-cu12==12.4.127; platform_system == "Linux" and platform_machine == "x86_64"',
]


def test_the_pin_in_torchs_requirements() -> None:
    assert node_doctor.nccl_from_requirements(TORCH_251) == "2.21.5"
    assert node_doctor.nccl_from_requirements(["filelock", "typing-extensions>=4.8.0"]) is None
    assert node_doctor.nccl_from_requirements(["nvidia-nccl-cu11==2.14.3"]) == "2.14.3"


@pytest.mark.parametrize(("code", "version"), [(22105, "2.21.5"), (21803, "2.18.3"), (2804, "2.8.4"), (2708, "2.7.8")])
def test_nccl_version_codes(code: int, version: str) -> None:
    """NCCL_VERSION_CODE changed at 2.9: major*10000 + minor*100 + patch, before major*1000 + ... (nccl.h)."""
    assert node_doctor.decode_nccl_version(code) == version


def a_libnccl(directory: Path, code: int) -> Path:
    """A shared library with NCCL's ``ncclResult_t ncclGetVersion(int*)``, standing in for
    a libnccl this machine (no GPU, a CPU torch) lacks."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    directory.mkdir(parents=True)
    source = directory / "nccl.c"
    source.write_text(f"int ncclGetVersion(int *version) {{ *version = {code}; return 0; }}\n")
    library = directory / "libnccl.so.2"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    source.unlink()
    return library


def test_the_library_where_pip_puts_it_is_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_doctor, "_torch_requirements", lambda: [])  # an NGC build: no pin
    torch_folder = tmp_path / "site-packages" / "torch"
    (torch_folder / "lib").mkdir(parents=True)
    a_libnccl(tmp_path / "site-packages" / "nvidia" / "nccl" / "lib", 22105)
    assert node_doctor.nccl_libraries([str(torch_folder)]) == [
        tmp_path / "site-packages" / "nvidia" / "nccl" / "lib" / "libnccl.so.2"
    ]
    assert node_doctor.nccl_version([str(torch_folder)]) == "2.21.5"  # not "2", the file name's


def test_torch_lib_and_a_library_that_is_not_nccl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_doctor, "_torch_requirements", lambda: [])
    torch_folder = tmp_path / "torch"
    a_libnccl(torch_folder / "lib", 21803)
    assert node_doctor.nccl_version([str(torch_folder)]) == "2.18.3"
    (torch_folder / "lib" / "libnccl.so.2").write_text("not a library")
    assert node_doctor.nccl_version([str(torch_folder)]) is None


def test_the_pin_wins_over_the_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_doctor, "_torch_requirements", lambda: TORCH_251)
    assert node_doctor.nccl_version([str(tmp_path)]) == "2.21.5"
