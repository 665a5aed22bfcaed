"""Fixtures of the container tests: one docker-compose project of docker-compose.yml per
test module, under a unique project name, on free 127.0.0.1 ports, always torn down.

    def test_x(compose):                 # chaos.ComposeProject, every node healthy
        compose.url("i-a1")              # boreal://127.0.0.1:PORT/ (also "i-b1", "i-c1")
        compose.stop("s-b1", "s-b2")     # kill/stop/start/pause/unpause, cut_az/heal_az

The tests skip (with the reason) when there is no docker CLI, no docker-compose, no Docker
engine answering `docker info`, or no base image to build from: $BASE_IMAGE if set, else
borealdb-base:bookworm (./deploy/base-image.sh) or python:3.11-slim, whichever exists
locally. BOREAL_DOCKER_TESTS=0 skips them too. The image is built as borealdb:test
($BOREAL_TEST_IMAGE), from the layer cache when nothing changed.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCAL_BASE_IMAGE = "borealdb-base:bookworm"
REGISTRY_BASE_IMAGE = "python:3.11-slim"
TEST_IMAGE = os.environ.get("BOREAL_TEST_IMAGE", "borealdb:test")


def _load_chaos():
    if "boreal_chaos" in sys.modules:  # this file may be imported twice (by pytest, by the tests)
        return sys.modules["boreal_chaos"]
    spec = importlib.util.spec_from_file_location("boreal_chaos", REPO / "deploy" / "chaos.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["boreal_chaos"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


chaos = _load_chaos()


def _skip_reason() -> tuple[str | None, str | None]:
    """(reason to skip, base image to build from)."""
    if os.environ.get("BOREAL_DOCKER_TESTS", "1") == "0":
        return "BOREAL_DOCKER_TESTS=0", None
    reason = chaos.docker_unavailable_reason()
    if reason:
        return reason, None
    if chaos.compose_command() is None:
        return "neither docker-compose nor `docker compose` is installed", None
    wanted = os.environ.get("BASE_IMAGE")
    for image in ([wanted] if wanted else [LOCAL_BASE_IMAGE, REGISTRY_BASE_IMAGE]):
        if chaos.image_exists(image):
            return None, image
    if wanted:
        return f"base image BASE_IMAGE={wanted} is not present in the Docker engine", None
    return (f"no base image: neither {LOCAL_BASE_IMAGE} (build it with ./deploy/base-image.sh) nor "
            f"{REGISTRY_BASE_IMAGE} is present in the Docker engine"), None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="session")
def base_image() -> str:
    reason, image = _skip_reason()
    if reason:
        pytest.skip(f"container tests need a Docker engine and a base image: {reason}")
    return image


@pytest.fixture(scope="module")
def compose(base_image, request):
    """A running compose project (6 storage nodes, writer, 2 readers), healthy; `down -v` after."""
    name = f"borealtest{uuid.uuid4().hex[:8]}"
    ports = _free_ports(3)
    env = {
        "BASE_IMAGE": base_image,
        "BOREAL_IMAGE": TEST_IMAGE,
        "BOREAL_HEALTH_INTERVAL": "2s",
        "BOREAL_I_A1_PORT": str(ports[0]),
        "BOREAL_I_B1_PORT": str(ports[1]),
        "BOREAL_I_C1_PORT": str(ports[2]),
    }
    project = chaos.ComposeProject(name, env=env)
    request.addfinalizer(project.down)  # registered first: runs even if build or up fails
    t0 = time.monotonic()
    project.build()
    t1 = time.monotonic()
    project.up(timeout=240)
    t2 = time.monotonic()
    project.timings = {"build_s": round(t1 - t0, 1), "up_to_healthy_s": round(t2 - t1, 1)}
    print(f"\ncompose project {name}: image build {t1 - t0:.1f}s, up to healthy {t2 - t1:.1f}s")
    return project


@pytest.fixture
def healthy(compose):
    """The module's project, every node healthy before the test; every fault undone after it."""
    compose.wait_healthy(timeout=120)
    yield compose
    compose.heal_all()
    compose.wait_healthy(timeout=120)
