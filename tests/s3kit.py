"""A real local S3 endpoint for tests: moto's server as a subprocess on a free loopback port.

Usage, as a session fixture::

    server = start_s3()
    with pytest.MonkeyPatch.context() as mp:
        use_test_env(mp)   # dummy credentials for this process too
        yield server
    server.stop()
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from openrange_mesh.cli.local_mesh import free_port

# Dummy credentials for the test process and the server; None removes a variable so that a
# developer's own AWS profile, session token or endpoint never leaks into a test.
AWS_TEST_ENV: dict[str, str | None] = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_PROFILE": None,
    "AWS_DEFAULT_PROFILE": None,
    "AWS_SESSION_TOKEN": None,
    "AWS_SECURITY_TOKEN": None,
    "AWS_ENDPOINT_URL": None,
    "AWS_ENDPOINT_URL_S3": None,
}


def use_test_env(mp: pytest.MonkeyPatch) -> None:
    """Apply ``AWS_TEST_ENV`` to this process until ``mp`` is undone."""
    for name, value in AWS_TEST_ENV.items():
        if value is None:
            mp.delenv(name, raising=False)
        else:
            mp.setenv(name, value)


def environment(overrides: dict[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@dataclass
class S3Server:
    endpoint_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def make_bucket(self, name: str) -> str:
        import boto3  # type: ignore[import-untyped]

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=name)
        return name

    def reset(self) -> None:
        """Wipe every bucket and object (moto's own reset API): a store whose bucket vanished."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log_path.unlink(missing_ok=True)


def start_s3(timeout: float = 20.0, attempts: int = 3) -> S3Server:
    """Start ``python -m moto.server`` on a free loopback port and wait until it answers.
    Retries on another port if one was taken between choosing and binding it."""
    failure = ""
    for _ in range(attempts):
        port = free_port()
        log = tempfile.NamedTemporaryFile(prefix="moto-", suffix=".log", delete=False)  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(AWS_TEST_ENV),
        )
        log.close()
        server = S3Server(f"http://127.0.0.1:{port}", process, Path(log.name))
        if _wait_until_answers(server, timeout):
            return server
        failure = Path(log.name).read_text(errors="replace")[-2000:]
        server.stop()
    raise RuntimeError(f"moto server did not start (is moto[server] installed?):\n{failure}")


def _wait_until_answers(server: S3Server, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.process.poll() is None:
        try:
            with urllib.request.urlopen(f"{server.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # it answered, if not with 200
        except OSError:
            time.sleep(0.05)
    return False
