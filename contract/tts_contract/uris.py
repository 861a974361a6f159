"""Artifact URIs: the one parser both the operator (admission, joins) and the runtime (fetch,
publish) use, so a URI means the same on both sides.

- ``s3://bucket/prefix``: an S3-compatible bucket and a key prefix (a "folder"); the endpoint,
  region and keys come from the location's Secret (``StorageEnv``).
- ``hf://org/repo@revision``: a Hugging Face hub model repository at a branch, tag or commit
  (default ``main``); ``HF_ENDPOINT`` points at a mirror.
- ``https://host/path``: one file or archive (``.tar``, ``.tar.gz``, ``.tgz``, ``.zip``), read only,
  with a required ``sha256``.

Keys never climb out of their prefix: a ``..`` segment, an absolute key (``s3://bucket//x``) or an
empty segment is refused here, at admission, before anything is fetched or written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["s3", "hf", "https"]

#: S3 bucket names (lowercase letters, digits, dots and hyphens; 3 to 63 characters)
BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
#: one key segment: no whitespace, no backslash, not "." or ".."
_SEGMENT = r"[^/\s\\]+"
S3_URI = rf"^s3://{BUCKET}(/{_SEGMENT})*/?$"
HF_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
HF_URI = rf"^hf://{HF_NAME}/{HF_NAME}(@[-A-Za-z0-9_./]+)?$"
HTTPS_URI = r"^https://[A-Za-z0-9.-]+(:[0-9]+)?/[^\s]*$"
#: any URI a location accepts (the CRD's pattern; the scheme-specific rules say which where)
ANY_URI = rf"({S3_URI})|({HF_URI})|({HTTPS_URI})"
#: a sha256 digest, hex
SHA256 = r"^[a-f0-9]{64}$"
DEFAULT_HF_REVISION = "main"
#: a ".." or "." segment anywhere in the path part
_DOTS = re.compile(r"(^|/)\.{1,2}(/|$)")


@dataclass(frozen=True)
class ArtifactUri:
    scheme: Scheme
    #: the bucket (s3), the repository "org/repo" (hf) or the host (https)
    authority: str
    #: the key prefix without leading or trailing "/" (s3), the path (https), "" for hf
    path: str = ""
    #: hf only: branch, tag or commit
    revision: str | None = None

    def __str__(self) -> str:
        if self.scheme == "hf":
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf://{self.authority}{rev}"
        return (
            f"{self.scheme}://{self.authority}/{self.path}"
            if self.path
            else f"{self.scheme}://{self.authority}"
        )

    @property
    def bucket(self) -> str:
        assert self.scheme == "s3"
        return self.authority

    def child(self, *parts: str) -> ArtifactUri:
        """``s3://b/prefix`` + ``version`` -> ``s3://b/prefix/version`` (s3 only)."""
        if self.scheme != "s3":
            raise ValueError(f"{self}: only s3:// locations have children")
        for part in parts:
            _check_key(part, str(self))
        path = "/".join(p.strip("/") for p in (self.path, *parts) if p.strip("/"))
        return ArtifactUri("s3", self.authority, path)

    def key(self, name: str) -> str:
        """The object key of ``name`` under this prefix (s3 only)."""
        return self.child(name).path


def _check_key(path: str, uri: str) -> None:
    if path.startswith("/") or "//" in path:
        raise ValueError(f"{uri}: the key must be relative (no leading '/' or empty segment)")
    if _DOTS.search(path):
        raise ValueError(f"{uri}: '.' and '..' segments are not allowed in a key")


def parse(uri: str) -> ArtifactUri:
    """The parts of ``uri``; ValueError naming what is wrong."""
    if uri.startswith("s3://"):
        rest = uri[len("s3://") :]
        bucket, _, path = rest.partition("/")
        if not re.fullmatch(BUCKET, bucket):
            raise ValueError(f"{uri}: {bucket!r} is not a valid bucket name")
        path = path.rstrip("/") if path != "/" else "/"
        _check_key(path, uri)
        if not re.match(S3_URI, uri):
            raise ValueError(f"{uri}: keys may not contain whitespace or backslashes")
        return ArtifactUri("s3", bucket, path)
    if uri.startswith("hf://"):
        if not re.match(HF_URI, uri):
            raise ValueError(f"{uri}: expected hf://org/repo or hf://org/repo@revision")
        repo, _, revision = uri[len("hf://") :].partition("@")
        if revision and _DOTS.search(revision):
            raise ValueError(f"{uri}: '.' and '..' segments are not allowed in a revision")
        return ArtifactUri("hf", repo, "", revision or DEFAULT_HF_REVISION)
    if uri.startswith("https://"):
        if not re.match(HTTPS_URI, uri):
            raise ValueError(f"{uri}: expected https://host/path")
        rest = uri[len("https://") :]
        host, _, path = rest.partition("/")
        if _DOTS.search(path.split("?", 1)[0]):
            raise ValueError(f"{uri}: '.' and '..' segments are not allowed in the path")
        return ArtifactUri("https", host, path)
    raise ValueError(f"{uri}: unsupported scheme: use s3://, hf:// or https://")
