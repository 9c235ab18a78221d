"""Fixtures for the real-client suite: the official `openai` SDK against the gateway binary.

One mock provider process and one gateway process serve the whole session:

    SDK client --(master key)--> switchyard serve --(provider key)--> switchyard-mock

The mock speaks the OpenAI, Anthropic and Gemini wires on one port and requires the provider
key (`--expect-api-key`), so a request that reaches it with any other key gets a 401 and the
test fails: the gateway must send the provider's key, never the client's. Every test starts
from a reset mock (zero calls, nothing recorded, normal behaviour), so it may assert on exactly
the requests it caused.

The binaries come from `SWITCHYARD_BIN_DIR` (set by `scripts/sdk-tests.sh`), else from
`target/debug`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from openai import OpenAI

from support import CLIENT_TIMEOUT_S, MASTER_KEY, MOCK_NAME, PROVIDER_KEY

REPO = Path(__file__).resolve().parents[2]

# How long a process may take to print its listening line.
START_TIMEOUT_S = 20.0

GATEWAY_CONFIG = """\
[[providers]]
name = "openai"
kind = "openai"
base_url = "{mock}/v1"
api_key_env = "SDK_TEST_OPENAI_KEY"
models = ["mock-*"]

[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{mock}"
api_key_env = "SDK_TEST_ANTHROPIC_KEY"

[[providers]]
name = "gemini"
kind = "gemini"
base_url = "{mock}"
api_key_env = "SDK_TEST_GEMINI_KEY"

[[routes]]
model = "smart"
targets = [ {{ provider = "openai", model = "mock-large" }} ]

# Only `cached` caches answers.
[[routes]]
model = "cached"
targets = [ {{ provider = "openai", model = "mock-cached" }} ]
[routes.cache]
enabled = true

# Only `limited` is rate limited, so that the other tests never meet the limit.
[[routes]]
model = "limited"
targets = [ {{ provider = "openai", model = "mock-small" }} ]

[[rate_limits.limits]]
name = "limited-rpm"
scope = "key"
requests = 2
per = "1h"
only = ["limited"]
"""


# Every process the session started, so a failing test's report can show their logs.
_CHILDREN: list[ChildProcess] = []
# How much of a child's stderr a failing test's report shows.
STDERR_TAIL_LINES = 30


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Adds the tail of each child's stderr to a failed test's report."""
    report = yield
    if report.failed and report.when == "call":
        for child in _CHILDREN:
            tail = "\n".join(child.stderr().splitlines()[-STDERR_TAIL_LINES:])
            report.sections.append((f"{child.name} stderr (full log: {child.log_path})", tail))
    return report


class ChildProcess:
    """A binary started on port 0 that announces its address on one stdout line."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        # `http://ADDR`, once the listening line has been read.
        self.address = ""
        self.log_path = log_path
        # stderr goes to a file: a pipe nobody drains would block the child once full.
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
            # Its own process group, so stopping it also stops anything it started.
            start_new_session=True,
        )
        _CHILDREN.append(self)
        self._lines: queue.Queue[str | None] = queue.Queue()
        # A thread keeps reading stdout so the child never blocks on a full pipe, and so the
        # wait for the first line can have a deadline.
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def wait_for_address(self, prefix: str) -> str:
        """The `http://ADDR` from the line `{prefix} http://ADDR`, or a failure with stderr."""
        deadline = time.monotonic() + START_TIMEOUT_S
        seen: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"did not print '{prefix} http://...' within {START_TIMEOUT_S}s", seen)
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass  # It closed stdout but lives on; _fail stops it.
                status = self.process.returncode
                self._fail(f"closed its stdout (exit status {status}) before listening", seen)
            seen.append(line)
            if line.startswith(prefix + " "):
                address = line[len(prefix) + 1 :].strip()
                if not address.startswith("http://"):
                    self._fail(f"printed an unexpected address {address!r}", seen)
                return address.rstrip("/")

    def stderr(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _fail(self, reason: str, stdout_lines: list[str]) -> None:
        self.stop()
        pytest.fail(
            f"{self.name} {reason}\n"
            f"--- stdout ---\n" + "\n".join(stdout_lines) + "\n"
            f"--- stderr ({self.log_path}) ---\n{self.stderr()}",
            pytrace=False,
        )

    def stop(self) -> None:
        """SIGTERM to the child's process group, SIGKILL if it lingers. Idempotent."""
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=5)
        self._log.close()

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass


class MockControl:
    """The mock's `/__mock/*` control API."""

    def __init__(self, base_url: str):
        self.base_url = base_url

    def _call(self, method: str, command: str, body: object = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base_url}/__mock/{command}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise AssertionError(
                f"mock control {method} /__mock/{command} failed: {error.code} {error.read()!r}"
            ) from error

    def reset(self) -> None:
        self._call("POST", "reset", {})

    def calls(self) -> int:
        return int(self._call("GET", "calls")["calls"])

    def requests(self) -> list[dict]:
        """Recorded API requests since the last reset, oldest first."""
        return list(self._call("GET", "requests"))

    def only_request(self) -> dict:
        """The one API request the test caused, failing if there were more or fewer."""
        recorded = self.requests()
        assert len(recorded) == 1, f"expected exactly one upstream request, got {recorded}"
        return recorded[0]

    def set_behavior(self, behavior: dict) -> None:
        self._call("POST", "behavior", behavior)

    def script(self, behaviors: list[dict]) -> None:
        self._call("POST", "script", behaviors)


@dataclass
class Gateway:
    """The running gateway: its root URL (no `/v1`)."""

    url: str


def binary_dir() -> Path:
    configured = os.environ.get("SWITCHYARD_BIN_DIR")
    directory = Path(configured) if configured else REPO / "target" / "debug"
    for name in ("switchyard", "switchyard-mock"):
        if not os.access(directory / name, os.X_OK):
            pytest.exit(
                f"{directory / name} is missing: build it (scripts/sdk-tests.sh does) "
                "or set SWITCHYARD_BIN_DIR",
                returncode=2,
            )
    return directory


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a child: ours, minus anything that could change what it serves."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("SWITCHYARD_") and not name.endswith("_API_KEY")
    }
    env.setdefault("RUST_LOG", "info")
    # Plain logs in the files a failing test shows.
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def mock_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    logs = tmp_path_factory.mktemp("mock")
    child = ChildProcess(
        "switchyard-mock",
        [
            str(binary_dir() / "switchyard-mock"),
            "--listen",
            "127.0.0.1:0",
            "--name",
            MOCK_NAME,
            "--expect-api-key",
            PROVIDER_KEY,
        ],
        child_env({}),
        logs / "stderr.log",
    )
    try:
        child.address = child.wait_for_address("switchyard-mock listening on")
        yield child
    finally:
        child.stop()


@pytest.fixture(scope="session")
def mock_control(mock_process: ChildProcess) -> MockControl:
    return MockControl(mock_process.address)


@pytest.fixture(scope="session")
def gateway(
    mock_process: ChildProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("gateway")
    config = directory / "switchyard.toml"
    config.write_text(GATEWAY_CONFIG.format(mock=mock_process.address))
    env = child_env(
        {
            "SWITCHYARD_MASTER_KEY": MASTER_KEY,
            "SWITCHYARD_DATA_DIR": str(directory / "data"),
            "SDK_TEST_OPENAI_KEY": PROVIDER_KEY,
            "SDK_TEST_ANTHROPIC_KEY": PROVIDER_KEY,
            "SDK_TEST_GEMINI_KEY": PROVIDER_KEY,
        }
    )
    child = ChildProcess(
        "switchyard",
        [
            str(binary_dir() / "switchyard"),
            "serve",
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
        ],
        env,
        directory / "stderr.log",
    )
    try:
        yield Gateway(child.wait_for_address("switchyard listening on"))
    finally:
        child.stop()


def enable_providers(gateway: Gateway) -> None:
    """Puts every provider back in rotation through the admin API, which also closes their
    breakers and ends Retry-After cooldowns, so that one test's scripted failures do not
    decide the next test's routing."""
    for name in ("openai", "anthropic", "gemini"):
        request = urllib.request.Request(
            f"{gateway.url}/admin/providers/{name}/enable",
            method="POST",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        )
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT_S) as response:
            assert response.status == 200


@pytest.fixture(autouse=True)
def mock(mock_control: MockControl, gateway: Gateway) -> MockControl:
    """The mock, reset so the test sees only its own upstream requests, behind a gateway
    whose providers are all healthy again."""
    mock_control.reset()
    enable_providers(gateway)
    return mock_control


@pytest.fixture
def client(gateway: Gateway) -> Iterator[OpenAI]:
    """An SDK client configured as an application would point it at the gateway.

    Without the SDK's own retries: a test must see the gateway's first answer, not a later
    one that hides a failure (and a retried 5xx would also cost seconds of backoff).
    """
    with OpenAI(
        base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, timeout=CLIENT_TIMEOUT_S, max_retries=0
    ) as sdk:
        yield sdk
