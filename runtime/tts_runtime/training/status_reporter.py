"""Progress into ``TrainingRun.status`` with the pod's ServiceAccount: a JSON merge patch over plain HTTPS.

No kubernetes client: the runtime image stays small and the one request we make is simple. The
operator gives the training pod a ServiceAccount whose Role allows ``patch`` on
``trainingruns/status`` for this run's name only. Reports go out from a background thread, newest
first (an older pending report is dropped), at most one every ``min_interval`` seconds; a failure is
logged and the next report tries again. Nothing here may ever stop training.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tts_contract.contract import API_GROUP, API_VERSION, ProgressReport, RunRef

log = logging.getLogger(__name__)

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class StatusReporter:
    def __init__(
        self,
        run: RunRef,
        *,
        server: str,
        token_file: Path | None,
        ca_file: Path | None,
        min_interval: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = (
            f"{server.rstrip('/')}/apis/{API_GROUP}/{API_VERSION}"
            f"/namespaces/{run.namespace}/trainingruns/{run.name}/status"
        )
        self.token_file = token_file
        self.ssl_context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self.min_interval = min_interval
        self.timeout = timeout
        self.sent = 0
        self.failures = 0
        self._pending: ProgressReport | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="status-reporter", daemon=True)
        self._thread.start()

    @classmethod
    def from_environment(cls, run: RunRef, sa_dir: Path = SA_DIR) -> StatusReporter | None:
        """The in-cluster reporter, or None outside a cluster (no API server address or no token)."""
        host, port = (
            os.environ.get("KUBERNETES_SERVICE_HOST"),
            os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
        )
        token = sa_dir / "token"
        if not host or not token.is_file():
            return None
        if ":" in host:  # an IPv6 address
            host = f"[{host}]"
        ca = sa_dir / "ca.crt"
        return cls(
            run, server=f"https://{host}:{port}", token_file=token, ca_file=ca if ca.is_file() else None
        )

    # --- the hook ------------------------------------------------------------------------------

    def __call__(self, report: ProgressReport) -> None:
        with self._cond:
            self._pending = report
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Send what is pending (the final state matters most), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    # --- the worker ----------------------------------------------------------------------------

    def _loop(self) -> None:
        last = 0.0
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                wait = last + self.min_interval - time.monotonic()
                if wait > 0 and not self._closed:
                    self._cond.wait(wait)  # newer reports replace _pending meanwhile
                    continue
                report, self._pending = self._pending, None
            last = time.monotonic()
            self._send(report)

    def _send(self, report: ProgressReport) -> None:
        body = json.dumps(report.status_patch()).encode()
        request = urllib.request.Request(self.url, data=body, method="PATCH")
        request.add_header("Content-Type", "application/merge-patch+json")
        request.add_header("Accept", "application/json")
        try:
            if self.token_file is not None:
                # projected tokens rotate: read the file every time
                request.add_header("Authorization", f"Bearer {self.token_file.read_text().strip()}")
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.ssl_context) as response:
                response.read()
            self.sent += 1
        except urllib.error.HTTPError as e:
            self._failed(f"HTTP {e.code}: {e.read()[:300]!r}")
        except (OSError, ValueError) as e:
            self._failed(str(e))

    def _failed(self, why: str) -> None:
        self.failures += 1
        # one line per failure would flood a long run's log: the first few, then every 100th
        if self.failures <= 3 or self.failures % 100 == 0:
            log.warning("status report to %s failed (%d so far): %s", self.url, self.failures, why)
