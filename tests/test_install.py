"""The project as a user installs it: its own wheel in a fresh environment, and beside Flower.

The wheel is built from this checkout and installed (not editable) into a new venv; the heavy dependencies
(torch, transformers, ...) are reused from the environment running the tests through a .pth file, so the
install takes seconds and still imports mpsl only from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import version
from pathlib import Path

import pytest

from mpsl.data.mnist import mnist_dir

ROOT = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]


def _env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH: what pip sees installed, and what the venv imports, must come from the environments."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, **extra}


def _run(*args: str | Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, check=False,
                          env=env or _env(), **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools builds in the source's build/ folder, and each xdist worker that runs a test
    # of this module builds its own wheel, so two builds in the checkout would remove each other's files.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    proc = _run(*PIP, "wheel", "--no-deps", "--quiet", "-w", out, source)
    assert proc.returncode == 0, proc.stderr
    (built,) = out.glob("mpsl-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel; the dependencies come from this interpreter's site-packages."""
    home = tmp_path_factory.mktemp("venv")
    assert _run(sys.executable, "-m", "venv", "--without-pip", home).returncode == 0
    proc = _run(*PIP, "--python", home / "bin" / "python", "install", "--no-deps", "--quiet", wheel)
    assert proc.returncode == 0, proc.stderr
    (site,) = (home / "lib").glob("python3*/site-packages")
    (site / "reuse-test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return home


def test_the_installed_wheel_gives_a_working_cli(venv: Path, tmp_path: Path) -> None:
    # Execute
    where = _run(venv / "bin" / "python", "-c", "import mpsl; print(mpsl.__file__)", cwd=tmp_path)
    shown = _run(venv / "bin" / "mpsl", "--version", cwd=tmp_path)
    listed = _run(venv / "bin" / "mpsl", "list", cwd=tmp_path)

    # Assert: mpsl from the wheel, its packaged configs and registries
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    assert shown.returncode == 0 and shown.stdout.strip() == f"mpsl {version('mpsl')}"
    assert listed.returncode == 0, listed.stderr
    assert "config     emoji" in listed.stdout and "dataset    avdigits" in listed.stdout


def test_the_installed_cli_names_what_the_demo_data_still_needs(venv: Path, tmp_path: Path) -> None:
    # Prepare: no MNIST files in data.root; then MNIST but no speech engine on the PATH
    (tmp_path / "empty").mkdir()
    common = ["data", "prepare", "avdigits", f"data.cache_dir={tmp_path / 'cache'}"]

    # Execute
    no_mnist = _run(venv / "bin" / "mpsl", *common, f"data.root={tmp_path / 'empty'}", cwd=tmp_path)
    no_speech = _run(venv / "bin" / "mpsl", *common, f"data.root={mnist_dir()}", cwd=tmp_path,
                     env=_env(PATH=str(venv / "bin")))

    # Assert: one line each, naming what to install
    assert no_mnist.returncode == 2 and no_mnist.stderr.count("\n") == 1, no_mnist.stderr
    assert "MNIST files not found" in no_mnist.stderr and "t10k-images-idx3-ubyte" in no_mnist.stderr
    assert no_speech.returncode == 2 and no_speech.stderr.count("\n") == 1, no_speech.stderr
    assert "apt-get install espeak-ng flite" in no_speech.stderr


def test_flower_and_mpsl_resolve_into_one_environment(venv: Path, wheel: Path) -> None:
    # Execute: pip's resolver over Flower's requirements and the wheel's, in the venv that holds the wheel (its
    # other packages already installed, so only Flower's are fetched: metadata and wheels, never a build)
    proc = _run(*PIP, "--python", venv / "bin" / "python", "install", "--dry-run", "--quiet", "--only-binary=:all:",
                "--report", "-", "flwr>=1.20", wheel)

    # Assert: Flower installs beside this mpsl, on a protobuf that both accept
    assert proc.returncode == 0, proc.stderr[-2000:]
    planned = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(proc.stdout)["install"]}
    assert "flwr" in planned and planned.get("mpsl", version("mpsl")) == version("mpsl")
    protobuf = planned.get("protobuf", version("protobuf"))  # not planned: the installed one already fits
    assert 5 <= int(protobuf.split(".")[0]) < 7, protobuf


@pytest.mark.parametrize("protobuf", ["5.29.0", "6.33.6"], ids=["oldest-allowed", "flower-resolves"])
def test_the_generated_grpc_modules_work_under_the_older_protobufs_the_pins_allow(
        wheel: Path, protobuf: str, tmp_path: Path) -> None:
    # Prepare: the wheel and that protobuf in a venv of their own (the rest reused, as above)
    home = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", "--without-pip", home).returncode == 0
    proc = _run(*PIP, "--python", home / "bin" / "python", "install", "--no-deps", "--quiet", "--only-binary=:all:",
                f"protobuf=={protobuf}", wheel)
    assert proc.returncode == 0, proc.stderr
    (site,) = (home / "lib").glob("python3*/site-packages")
    (site / "reuse-test-environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = ("import google.protobuf, warnings\n"
              "warnings.simplefilter('error')\n"
              "from mpsl.runtime.network import mpsl_pb2, mpsl_pb2_grpc\n"
              "wire = mpsl_pb2.ClientMessage(join=mpsl_pb2.Join(client_id=3, samples=5)).SerializeToString()\n"
              "print(google.protobuf.__version__, mpsl_pb2.ClientMessage.FromString(wire).join.client_id)\n")

    # Execute
    proc = _run(home / "bin" / "python", "-c", script, cwd=tmp_path)

    # Assert: that protobuf, no version warning, the message round trip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [protobuf, "3"]
