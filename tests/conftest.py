"""Shared test fixtures: where the real media live, and a guard that CI never skips data tests silently."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A valid study file as a dict: two axes (4 cells), a searched LR and video mask ratio, tiny model.
TINY_STUDY = {
    "name": "t",
    "data": {"kind": "av-digits", "root": "/data/avd", "val_split": "val"},
    "model": {"preset": "tiny"},
    "axes": {"fusion": ["early", "mid"], "objective": ["joint", "inpainting"]},
    "search": {
        "lr": {"dist": "loguniform", "low": 1e-5, "high": 1e-2},
        "mask_ratio_video": {"dist": "uniform", "low": 0.5, "high": 0.95},
    },
    "trials_per_cell": 3,
    "train": {"epochs": 2, "batch_size": 8},
}


def shared_data_dir() -> Path:
    return Path(os.environ.get("AVMAE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and OpenMP spin-waits badly on a shared 2-core box."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real clips and FSDD). Missing on a user's fresh clone: skip there, fail in CI."""
    path = shared_data_dir()
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared data at {path} (set AVMAE_SHARED_DATA)")
        pytest.skip(f"no shared data at {path}; set AVMAE_SHARED_DATA to run the real-media tests")
    return path


@pytest.fixture(scope="session")
def clips_dir(shared_data: Path) -> Path:
    return shared_data / "clips"


@pytest.fixture(scope="session")
def fsdd_dir(shared_data: Path) -> Path:
    return shared_data / "fsdd" / "recordings"


# --- Ray sweeps (platform) -------------------------------------------------------------------------------


def built_av_digits(factory: pytest.TempPathFactory, name: str, speech: Path | None = None,
                    **settings: object) -> Path:
    """An AV-Digits build with `settings` (AVDigitsBuild's fields) in a new folder `name`."""
    from avmae.platform.data import AVDigitsBuild, build_av_digits

    out = factory.mktemp(name)
    build_av_digits(out, AVDigitsBuild(**settings), speech, workers=2, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_av_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-clip AV-Digits build (DTMF audio) for Ray sweeps: 20 train, 10 val, 10 test clips."""
    return built_av_digits(tmp_path_factory, "av_digits", clips_per_digit=4)


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20-clip AV-Digits build (2 s clips at 32 fps, 48 px) for the cache and loader tests."""
    return built_av_digits(tmp_path_factory, "avdigits", clips_per_digit=2, size=48)


def run_cli(args: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None):
    """`avmae ARGS` in its own process group, killed as a whole (Ray's daemons included) on timeout."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "avmae.platform.cli", *args], cwd=cwd, env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"avmae {' '.join(args)} ran past {timeout} s:\n{out[-4000:]}")
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # anything of the run still alive in its group (none, normally)
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None)


# What a user must never see on a study's console unless something is wrong: Python warnings, log records
# at WARNING or above, glog error lines from Ray's core worker, tracebacks, download progress bars.
NOISE = re.compile(r"(Warning\b|\bWARNING\b|\bERROR\b|^\S*E\d{4} \d\d:\d\d|Traceback|Downloading artifacts"
                   r"|Validating input example|^\s*warnings\.warn)", re.MULTILINE)


def console_noise(output: str, expected: tuple[str, ...] = ()) -> list[str]:
    """The lines of `output` a user would read as a warning or an error, less those containing `expected`."""
    return [line for line in output.splitlines()
            if NOISE.search(line) and not any(text in line for text in expected)]


@pytest.fixture
def s3_endpoint():
    """host:port of a moto S3 server on 127.0.0.1, started here; skips, saying why, where it cannot start."""
    import socket

    server_module = pytest.importorskip("moto.server", reason="moto[server] (dev extras) is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        server.start()
    except OSError as err:
        pytest.skip(f"the moto S3 server cannot start here: {err}")
    yield f"127.0.0.1:{port}"
    server.stop()
