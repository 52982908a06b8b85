"""Fixtures for tests that run step containers on a real Docker engine (import them in a test module).

`docker_engine` starts the private engine of docker/engine.sh (or reuses one that answers) and stops
it by its PID at the end of the session when this session started it (EDGETPU_DOCKER_KEEP=1 keeps it
running for the next session). `trainer_image` builds the trainer image with docker/build.sh, which
skips the build when requirements, pyproject and the package are unchanged. When no engine can be
started (not root, no apt, no cgroups...), the tests skip with a one-line reason; under CI=true they
fail instead, so CI never passes without having run them.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENGINE_SH = REPO / "docker" / "engine.sh"
BUILD_SH = REPO / "docker" / "build.sh"
BUILD_TIMEOUT_S = 1800  # a cold build: debootstrap + wheel download + pip install (measured ~7 min)


@dataclass(frozen=True)
class Engine:
    """A running engine: the DOCKER_HOST to give clients, and whether this session started it."""

    docker_host: str
    started_here: bool

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.docker_host}

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.docker_host, timeout=300)


def unavailable(reason: str) -> None:
    """Skip with a one-line reason, or fail under CI=true (CI must run the docker tests)."""
    reason = " ".join(reason.split())[:300]
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"CI=true and the Docker engine is unavailable: {reason}", pytrace=False)
    pytest.skip(f"no Docker engine: {reason}")


def _key_value(stdout: str, key: str) -> str | None:
    lines = [line for line in stdout.splitlines() if line.startswith(f"{key}=")]
    return lines[-1].split("=", 1)[1] if lines else None


def _engine(action: str, *, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ENGINE_SH), action], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """The private Docker engine (started or reused); stopped by PID at session end if started here."""
    was_running = _engine("status", timeout=60).returncode == 0
    try:
        proc = _engine("start", timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"docker/engine.sh start: {exc}")
    host = _key_value(proc.stdout, "DOCKER_HOST")
    if proc.returncode != 0 or not host:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        unavailable(f"docker/engine.sh start exited {proc.returncode}: {last}")
    engine = Engine(docker_host=host, started_here=not was_running)
    yield engine
    if engine.started_here and os.environ.get("EDGETPU_DOCKER_KEEP") != "1":
        _engine("stop", timeout=120)


@pytest.fixture(scope="session")
def trainer_image(docker_engine: Engine) -> str:
    """The trainer image's content tag (built on first use, then cached by docker/build.sh)."""
    proc = subprocess.run(
        ["bash", str(BUILD_SH), "--image", "trainer"],
        env=docker_engine.env(),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    image = _key_value(proc.stdout, "IMAGE")
    if proc.returncode != 0 or not image:
        # the engine runs, so a failed build is a real failure, not a missing prerequisite
        pytest.fail(f"docker/build.sh failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", pytrace=False)
    return image


def data_root_for_containers(path: Path) -> Path:
    """A data root the containers' user (50000:0) can write, bind-mounted at this same path."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.chown(path, 50000, 0)
    except PermissionError:  # not root (an engine reused from elsewhere): let any uid write
        path.chmod(0o777)
    return path
