"""The status reporter against a real local HTTP server; progress hooks that fail never stop training."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tts_contract.contract import Progress, ProgressReport, RunRef
from tts_runtime.training.progress import ProgressTracker, read_progress
from tts_runtime.training.status_reporter import StatusReporter


class _Recorder(BaseHTTPRequestHandler):
    requests: list[dict[str, Any]] = []
    status = 200

    def do_PATCH(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).requests.append(
            {
                "path": self.path,
                "auth": self.headers.get("Authorization"),
                "type": self.headers.get("Content-Type"),
                "body": json.loads(body),
            }
        )
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_server() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"requests": [], "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def _report(step: int) -> ProgressReport:
    return ProgressReport(progress=Progress(epoch=1, epochs=3, step=step, loss=1.0 / step))


def test_reports_are_merge_patches_on_the_status_subresource(
    api_server: tuple[str, type[_Recorder]], tmp_path: Path
) -> None:
    url, handler = api_server
    token = tmp_path / "token"
    token.write_text("secret-token\n")
    reporter = StatusReporter(
        RunRef(namespace="voices", name="narrator-ft"),
        server=url,
        token_file=token,
        ca_file=None,
        min_interval=0.3,
    )
    for step in range(1, 6):  # faster than min_interval: only the newest report of a burst goes out
        reporter(_report(step))
    reporter.close()
    assert handler.requests, "nothing was sent"
    first = handler.requests[0]
    assert (
        first["path"] == "/apis/tts-operator.dev/v1alpha1/namespaces/voices/trainingruns/narrator-ft/status"
    )
    assert first["auth"] == "Bearer secret-token"
    assert first["type"] == "application/merge-patch+json"
    assert len(handler.requests) < 5
    assert handler.requests[-1]["body"] == _report(5).status_patch()  # the final state always arrives


def test_unreachable_or_refusing_api_server_never_raises(
    api_server: tuple[str, type[_Recorder]], tmp_path: Path
) -> None:
    url, handler = api_server
    handler.status = 403
    run = RunRef(namespace="a", name="b")
    refused = StatusReporter(run, server=url, token_file=None, ca_file=None, min_interval=0)
    down = StatusReporter(
        run, server="http://127.0.0.1:9", token_file=None, ca_file=None, min_interval=0, timeout=2
    )
    started = time.monotonic()
    for reporter in (refused, down):
        reporter(_report(1))  # returns at once: sending happens on the reporter's thread
    assert time.monotonic() - started < 0.5
    for reporter in (refused, down):
        reporter.close()
        assert reporter.failures == 1 and reporter.sent == 0


def test_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunRef(namespace="ns", name="r")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert StatusReporter.from_environment(run, sa_dir=tmp_path) is None
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    assert StatusReporter.from_environment(run, sa_dir=tmp_path) is None  # no token: not our pod
    (tmp_path / "token").write_text("t")
    reporter = StatusReporter.from_environment(run, sa_dir=tmp_path)
    assert reporter is not None
    assert reporter.url.startswith("https://10.0.0.1:6443/apis/tts-operator.dev/v1alpha1/namespaces/ns/")
    reporter.close()


def test_failing_progress_hook_does_not_stop_progress(tmp_path: Path) -> None:
    seen: list[int] = []

    def broken(report: ProgressReport) -> None:
        raise ConnectionError("api server gone")

    tracker = ProgressTracker(
        tmp_path,
        epochs=2,
        attempt=1,
        resumed_from_epoch=None,
        hooks=[broken, lambda r: seen.append(r.progress.step)],
    )
    tracker.start(steps_per_epoch=3, step=0)
    tracker.epoch_start(1)
    tracker.step(1, 0.5)
    tracker.step(2, 0.4)
    report = read_progress(tmp_path)
    assert report is not None and report.progress.step == 2 and report.progress.loss == 0.4
    assert report.progress.eta is not None
    assert seen[-1] == 2
