"""The Docker engine connection, the lab's one error type, and progress messages.

Every call into the `docker` SDK runs inside `docker_step(...)`, so a failure surfaces as one
`LabError` that says what the lab was doing, never as a traceback from deep inside the SDK.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException


class LabError(Exception):
    """A lab step failed; the message says which step and why, on one line."""


def say(message: str) -> None:
    """Print one progress line for the user (stderr, so stdout stays parseable)."""
    print(f"lab: {message}", file=sys.stderr, flush=True)


def describe(exc: BaseException) -> str:
    """A one-line description of a docker SDK (or transport) exception."""
    if isinstance(exc, APIError):
        text = str(exc.explanation or exc)
        status = exc.status_code
        return f"{text} (HTTP {status})" if status else text
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def docker_step(what: str) -> Iterator[None]:
    """Turn docker SDK and transport exceptions raised inside the block into `LabError`."""
    try:
        yield
    except (DockerException, requests.RequestException) as exc:
        raise LabError(f"{what}: {describe(exc)}") from exc


def connect() -> Any:
    """A `docker.DockerClient` for the local engine, or `LabError` if the engine is unreachable."""
    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, requests.RequestException) as exc:
        raise LabError(
            f"the Docker daemon is unreachable ({describe(exc)}); start dockerd first"
        ) from exc
    return client
