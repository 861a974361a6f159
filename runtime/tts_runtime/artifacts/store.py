"""Where artifacts live: the S3 client a location's environment configures, the one error type every
artifact operation raises, and the bounded retry of an unreachable storage.

``ArtifactError`` carries an exit code of the contract (``ExitCode.ARTIFACT_NOT_FOUND``,
``STORAGE_UNREACHABLE``, ``VERSION_EXISTS``, ``CHECKSUM_MISMATCH``, ``ACCESS_DENIED``), the status
reason the operator shows for it (``ARTIFACT_REASONS``), the URI and a message that names the URI and
never a secret: the values of the ``StorageEnv`` secrets are masked, signed query strings and
``user:password@`` are cut from every URL a library puts in its message.

``classify`` turns whatever boto3/botocore, s3transfer, huggingface_hub, requests or the socket layer
raised into one of these; ``retrying`` runs an operation again while its error is
``STORAGE_UNREACHABLE``, with exponential back-off and full jitter, for at most a bounded total.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from tts_contract.contract import ARTIFACT_REASONS, ExitCode, StorageEnv
from tts_contract.uris import ArtifactUri

from ..errors import RuntimeCommandError

log = logging.getLogger("tts_runtime.artifacts")

T = TypeVar("T")

#: the region when neither AWS_REGION nor AWS_DEFAULT_REGION is set (what S3-compatible servers expect)
DEFAULT_REGION = "us-east-1"
#: how long an unreachable storage is retried before STORAGE_UNREACHABLE ends the command
DEFAULT_RETRY_TOTAL_S = 60.0
#: first back-off; doubled after every failure up to RETRY_MAX_DELAY_S (full jitter)
RETRY_FIRST_DELAY_S = 0.5
RETRY_MAX_DELAY_S = 10.0
#: connections to the storage (the transfer manager's threads share them)
MAX_POOL_CONNECTIONS = 32

#: env variables whose values are secrets: masked in every message
SECRET_ENV = (
    StorageEnv.SECRET_ACCESS_KEY,
    StorageEnv.SESSION_TOKEN,
    StorageEnv.HF_TOKEN,
    StorageEnv.ACCESS_KEY_ID,
)

_ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidSecurity",
        "Forbidden",
        "Unauthorized",
        "401",
        "403",
    }
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion", "404"})
_UNREACHABLE_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "BadGateway",
        "GatewayTimeout",
        "500",
        "502",
        "503",
        "504",
    }
)
_EXISTS_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict"})


#: the reasons of the codes ARTIFACT_REASONS does not name (a bad URI, a key escaping its folder...)
_OTHER_REASONS = {ExitCode.BAD_INPUT: "BadInput", ExitCode.FAILURE: "ArtifactFailed"}


class ArtifactError(RuntimeCommandError):
    """An artifact operation failed in a way the contract names.

    ``str(error)`` is the one line a pod's termination message and stderr show:
    ``<Reason>: <uri>: <what>``. It is a ``RuntimeCommandError``, so ``tts-runtime`` exits with
    ``code`` when one escapes a command.
    """

    def __init__(
        self, code: ExitCode, uri: ArtifactUri | str, message: str, *, retryable: bool | None = None
    ):
        self.code = ExitCode(code)
        self.reason = ARTIFACT_REASONS.get(self.code) or _OTHER_REASONS.get(self.code, "ArtifactFailed")
        self.uri = safe_uri(str(uri))
        self.message = redact(message)
        #: whether a later try may succeed (STORAGE_UNREACHABLE, except a TLS certificate refused)
        self.retryable = self.code == ExitCode.STORAGE_UNREACHABLE if retryable is None else retryable
        super().__init__(str(self))

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        return self.code

    def __str__(self) -> str:
        return f"{self.reason}: {self.uri}: {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.code, self.uri, self.message, self.retryable))


def _rebuild(code: ExitCode, uri: str, message: str, retryable: bool) -> ArtifactError:
    return ArtifactError(code, uri, message, retryable=retryable)


# --- secrets never leave in a message ------------------------------------------------------------

_URL_SECRETS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<userinfo>[^/\s@'\"]+@)?(?P<rest>[^\s?'\"#]*)(?P<query>\?[^\s'\"]*)?"
)


def safe_uri(uri: str) -> str:
    """``uri`` without a ``user:password@`` part or a query string (signed URLs carry keys there)."""
    return _URL_SECRETS.sub(_strip_url, uri)


def _strip_url(m: re.Match[str]) -> str:
    query = "?…" if m.group("query") else ""
    return f"{m.group('scheme')}{m.group('rest')}{query}"


#: secret values of explicit ``env`` mappings this process was given (masked like the environment's)
_SECRETS: set[str] = set()


def remember_secrets(env: Mapping[str, str] | None) -> None:
    """Mask the ``SECRET_ENV`` values of ``env`` (an explicit mapping, not the environment) in every
    later message."""
    if env is not None:
        _SECRETS.update(v for name in SECRET_ENV if len(v := env.get(name) or "") >= 4)


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """``text`` with secret values masked (the environment's and those ``remember_secrets`` was
    given) and URL credentials/query strings cut."""
    env = os.environ if env is None else env
    text = safe_uri(text)
    values = {env.get(name) or "" for name in SECRET_ENV} | _SECRETS
    for value in sorted(values, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "***")
    # an Authorization header or a token a library echoed
    text = re.sub(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bearer\s+)?[^\s'\",}]+", r"\1***", text)
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}\b", "hf_***", text)


# --- the S3 client --------------------------------------------------------------------------------


def s3_client(
    env: Mapping[str, str] | None = None,
    *,
    max_attempts: int = 2,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    max_pool_connections: int = MAX_POOL_CONNECTIONS,
) -> Any:
    """A boto3 S3 client configured from ``StorageEnv`` variables in ``env`` (default: the process's
    environment, which is what a location's Secret becomes through ``envFrom``).

    - the endpoint: ``AWS_ENDPOINT_URL`` (SeaweedFS, MinIO, Ceph RGW...), unset: AWS;
    - the region: ``AWS_REGION`` (then ``AWS_DEFAULT_REGION``), default ``us-east-1``;
    - path-style addressing when an endpoint is set, unless ``AWS_S3_ADDRESSING_STYLE=virtual``
      (``path``/``virtual`` force either);
    - the keys: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``). Without
      keys, the process environment falls back on boto3's chain (web identity, instance profile);
      an explicit ``env`` without keys makes anonymous (unsigned) requests, for public buckets.

    Few botocore retries (``max_attempts``) and short connect timeouts: an unreachable endpoint is
    retried by ``retrying`` with back-off, for a bounded total, printing each try.
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    explicit = env is not None
    remember_secrets(env)
    env = os.environ if env is None else env
    endpoint = env.get(StorageEnv.ENDPOINT_URL) or None
    region = env.get(StorageEnv.REGION) or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    style = (env.get(StorageEnv.ADDRESSING_STYLE) or "").strip().lower()
    if style not in ("path", "virtual"):
        style = "path" if endpoint else "virtual"
    key_id = env.get(StorageEnv.ACCESS_KEY_ID) or None
    secret = env.get(StorageEnv.SECRET_ACCESS_KEY) or None
    token = env.get(StorageEnv.SESSION_TOKEN) or None
    options: dict[str, Any] = {
        "region_name": region,
        "s3": {"addressing_style": style},
        "retries": {"max_attempts": max(1, max_attempts), "mode": "standard"},
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
        "max_pool_connections": max_pool_connections,
        # the endpoint comes from ``env`` only, never from a config file or another variable
        "ignore_configured_endpoint_urls": True,
        # checksums on every upload/download where S3 supports them; "when_required" keeps
        # S3-compatible servers that do not know the newer CRC headers working
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }
    if explicit and not (key_id and secret):
        options["signature_version"] = UNSIGNED
    keys: dict[str, Any] = {}
    if key_id and secret:
        keys = {"aws_access_key_id": key_id, "aws_secret_access_key": secret, "aws_session_token": token}
    with _SESSION_LOCK:
        global _SESSION
        if _SESSION is None:  # loading botocore's data takes a quarter of a second: once per process
            _SESSION = boto3.session.Session()
        return _SESSION.client(
            "s3", endpoint_url=endpoint, region_name=region, config=Config(**options), **keys
        )


#: one boto3 session per process (clients are made from it under the lock: sessions are not thread-safe)
_SESSION: Any = None
_SESSION_LOCK = threading.Lock()


# --- errors -> the contract's codes -------------------------------------------------------------


def classify(exc: BaseException, uri: ArtifactUri | str) -> ArtifactError:
    """The ``ArtifactError`` for an exception a storage, hub, http or socket call raised."""
    if isinstance(exc, ArtifactError):
        return exc
    found = _classify(exc, uri)
    if found is not None:
        return found
    # a wrapped cause (s3transfer's RetriesExceededError, urllib3 inside requests, a future's error)
    for inner in _causes(exc):
        found = _classify(inner, uri)
        if found is not None:
            return found
    return ArtifactError(ExitCode.FAILURE, uri, f"{type(exc).__name__}: {_text(exc)}")


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [
        getattr(exc, "last_exception", None),
        exc.__cause__,
        exc.__context__,
        *(a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)),
    ]
    while stack and len(seen) < 16:
        e = stack.pop(0)
        if e is None or e in seen or e is exc:
            continue
        seen.append(e)
        stack += [getattr(e, "last_exception", None), e.__cause__, e.__context__]
        stack += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(e, "reason", None)
        if isinstance(reason, BaseException):
            stack.append(reason)
    return seen


def _text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _by_status(status: int | None, uri: ArtifactUri | str, what: str) -> ArtifactError | None:
    if status is None:
        return None
    if status in (401, 403):
        return ArtifactError(ExitCode.ACCESS_DENIED, uri, f"access denied ({status}): {what}")
    if status in (404, 410):
        return ArtifactError(ExitCode.ARTIFACT_NOT_FOUND, uri, f"not found ({status}): {what}")
    if status == 412:
        return ArtifactError(ExitCode.VERSION_EXISTS, uri, f"already exists ({status}): {what}")
    if status in (408, 429) or status >= 500:
        return ArtifactError(ExitCode.STORAGE_UNREACHABLE, uri, f"the storage answered {status}: {what}")
    return None


def _classify(exc: BaseException, uri: ArtifactUri | str) -> ArtifactError | None:
    name = type(exc).__name__
    module = type(exc).__module__ or ""

    # botocore
    if module.startswith("botocore"):
        from botocore import exceptions as be

        if isinstance(exc, be.ClientError):
            err = exc.response.get("Error", {}) or {}
            code = str(err.get("Code") or "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            op = getattr(exc, "operation_name", "") or "request"
            what = f"{code or status} on {op}" + (f": {err['Message']}" if err.get("Message") else "")
            if code in _ACCESS_DENIED_CODES:
                return ArtifactError(
                    ExitCode.ACCESS_DENIED, uri, f"access denied ({what}); check the location's keys"
                )
            if code in _NOT_FOUND_CODES:
                kind = "bucket" if code == "NoSuchBucket" else "object"
                return ArtifactError(ExitCode.ARTIFACT_NOT_FOUND, uri, f"no such {kind} ({what})")
            if code in _UNREACHABLE_CODES:
                return ArtifactError(ExitCode.STORAGE_UNREACHABLE, uri, f"the storage failed ({what})")
            if code in _EXISTS_CODES:
                return ArtifactError(ExitCode.VERSION_EXISTS, uri, f"already exists ({what})")
            return _by_status(status, uri, what)
        if isinstance(exc, be.NoCredentialsError | be.PartialCredentialsError):
            return ArtifactError(
                ExitCode.ACCESS_DENIED,
                uri,
                f"no credentials: set {StorageEnv.ACCESS_KEY_ID} and {StorageEnv.SECRET_ACCESS_KEY} "
                "(the location's secretRef)",
            )
        if isinstance(exc, be.SSLError):
            return ArtifactError(
                ExitCode.STORAGE_UNREACHABLE, uri, f"TLS failed: {_text(exc)}", retryable=False
            )
        if isinstance(
            exc,
            be.EndpointConnectionError
            | be.ConnectTimeoutError
            | be.ReadTimeoutError
            | be.ConnectionClosedError
            | be.ProxyConnectionError
            | be.HTTPClientError
            | be.ResponseStreamingError
            | be.IncompleteReadError,
        ):
            return ArtifactError(ExitCode.STORAGE_UNREACHABLE, uri, f"cannot reach the storage: {_text(exc)}")
        if isinstance(exc, be.ParamValidationError):
            return ArtifactError(ExitCode.BAD_INPUT, uri, _text(exc))
        return None

    # huggingface_hub (subclasses of requests.HTTPError: first)
    if module.startswith("huggingface_hub"):
        from huggingface_hub import errors as he

        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(exc, he.OfflineModeIsEnabled):
            return ArtifactError(ExitCode.STORAGE_UNREACHABLE, uri, "HF_HUB_OFFLINE is set", retryable=False)
        if isinstance(exc, he.LocalEntryNotFoundError):
            # raised by snapshot_download when the hub could not be reached and nothing is cached
            return ArtifactError(ExitCode.STORAGE_UNREACHABLE, uri, "cannot reach the hub (HF_ENDPOINT)")
        if status in (401, 403) or isinstance(exc, he.GatedRepoError | he.DisabledRepoError):
            return ArtifactError(
                ExitCode.ACCESS_DENIED,
                uri,
                f"access denied ({status or 'gated'}): the repository is private or gated and "
                f"{StorageEnv.HF_TOKEN} is unset or has no access to it (or it does not exist)",
            )
        if isinstance(exc, he.RevisionNotFoundError):
            return ArtifactError(ExitCode.ARTIFACT_NOT_FOUND, uri, "no such revision (branch, tag or commit)")
        if isinstance(exc, he.RepositoryNotFoundError):
            return ArtifactError(ExitCode.ARTIFACT_NOT_FOUND, uri, "no such repository")
        if isinstance(exc, he.EntryNotFoundError):
            return ArtifactError(ExitCode.ARTIFACT_NOT_FOUND, uri, f"no such file: {_text(exc)}")
        if isinstance(exc, he.HfHubHTTPError):
            return _by_status(status, uri, f"the hub answered {status}")
        return None

    # requests (and urllib3 below it)
    if module.startswith("requests"):
        import requests

        if isinstance(exc, requests.exceptions.SSLError):
            return ArtifactError(
                ExitCode.STORAGE_UNREACHABLE, uri, f"TLS failed: {_tls_text(exc)}", retryable=False
            )
        if isinstance(exc, requests.HTTPError):
            status = getattr(exc.response, "status_code", None)
            return _by_status(status, uri, f"the server answered {status}")
        if isinstance(
            exc, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError
        ):
            return ArtifactError(
                ExitCode.STORAGE_UNREACHABLE, uri, f"cannot reach the server: {_reason(exc)}"
            )
        return None
    if module.startswith("urllib3"):
        if "SSL" in name:
            return ArtifactError(
                ExitCode.STORAGE_UNREACHABLE, uri, f"TLS failed: {_tls_text(exc)}", retryable=False
            )
        if name in (
            "MaxRetryError",
            "NewConnectionError",
            "ConnectTimeoutError",
            "ReadTimeoutError",
            "ProtocolError",
            "ProxyError",
            "IncompleteRead",
            "NameResolutionError",
        ):
            return ArtifactError(
                ExitCode.STORAGE_UNREACHABLE, uri, f"cannot reach the server: {_reason(exc)}"
            )
        return None

    # the socket layer
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ArtifactError(ExitCode.STORAGE_UNREACHABLE, uri, f"TLS failed: {_text(exc)}", retryable=False)
    if isinstance(exc, socket.gaierror):
        return ArtifactError(ExitCode.STORAGE_UNREACHABLE, uri, f"cannot resolve the host: {_text(exc)}")
    if isinstance(exc, ConnectionError | TimeoutError | socket.timeout | ssl.SSLError):
        return ArtifactError(ExitCode.STORAGE_UNREACHABLE, uri, f"cannot reach the storage: {_text(exc)}")
    return None


def _reason(exc: BaseException) -> str:
    """The innermost useful reason of a requests/urllib3 connection error (they nest three deep)."""
    for inner in reversed(_causes(exc)):
        if isinstance(inner, OSError) and not type(inner).__module__.startswith(("requests", "urllib3")):
            return _text(inner)
    text = _text(exc)
    m = re.search(r"\[Errno[^\]]*\][^)'\"]*", text)
    return m.group(0).strip() if m else text


def _tls_text(exc: BaseException) -> str:
    text = _text(exc)
    m = re.search(r"certificate verify failed[^)'\"]*", text)
    hint = " (trust its CA with SSL_CERT_FILE / REQUESTS_CA_BUNDLE)" if m else ""
    return (m.group(0).strip() if m else text) + hint


# --- bounded retry -------------------------------------------------------------------------------


def retrying(
    op: Callable[[], T],
    uri: ArtifactUri | str,
    *,
    total_s: float = DEFAULT_RETRY_TOTAL_S,
    what: str = "",
    on_retry: Callable[[str], None] | None = None,
    first_delay_s: float = RETRY_FIRST_DELAY_S,
    max_delay_s: float = RETRY_MAX_DELAY_S,
    progress: Callable[[], int] | None = None,
) -> T:
    """``op()``; while it fails with STORAGE_UNREACHABLE (after ``classify``), again after an
    exponential back-off with full jitter, until ``total_s`` seconds have passed since the first try
    (or, with ``progress``, a counter of bytes moved, since the last try that moved some: a long
    download that loses the storage for a while goes on where it was). Every retry is reported
    through ``on_retry`` (default: a log warning). Other errors, and the last unreachable one, are
    raised as ``ArtifactError``."""
    start = time.monotonic()
    attempt = 0
    delay = first_delay_s
    moved = progress() if progress else 0
    while True:
        attempt += 1
        try:
            return op()
        except Exception as e:
            err = classify(e, uri)
            if not err.retryable:
                raise err from e
            if progress is not None and progress() > moved:
                moved = progress()
                start = time.monotonic()
                delay = first_delay_s
            elapsed = time.monotonic() - start
            left = total_s - elapsed
            if left <= 0:
                err.message = f"{err.message} (gave up after {attempt} tries in {elapsed:.0f}s)"
                raise ArtifactError(err.code, err.uri, err.message, retryable=True) from e
            sleep = min(left, random.uniform(0, delay) + min(0.1, delay))
            line = (
                f"{err.reason}: {err.uri}: {err.message}; "
                f"{what + ': ' if what else ''}try {attempt + 1} in {sleep:.1f}s "
                f"({left:.0f}s of retries left)"
            )
            (on_retry or log.warning)(line)
            time.sleep(sleep)
            delay = min(max_delay_s, delay * 2)


def shutdown_transfers(manager: Any, error: BaseException | None) -> None:
    """Shut an s3transfer ``TransferManager`` down: wait for its transfers, or cancel them after
    ``error``. (Through the context-manager exit: ``shutdown(cancel=True, ...)`` of s3transfer 0.19
    passes its arguments in the wrong order and raises a TypeError.)"""
    if error is None:
        manager.shutdown()
    else:
        manager.__exit__(type(error), error, error.__traceback__)


@contextlib.contextmanager
def transfers(client: Any, config: Any) -> Iterator[Any]:
    """An s3transfer ``TransferManager`` for the block: on leaving it, its transfers are waited for,
    or, when the block raised, cancelled (and the error raised again)."""
    from s3transfer.manager import TransferManager

    manager = TransferManager(client, config)
    try:
        yield manager
    except BaseException as e:
        shutdown_transfers(manager, e)
        raise
    shutdown_transfers(manager, None)
