"""Certificates for the local control plane, generated with openssl (one CA, one admin/serving cert,
one service-account signing key, as kwokctl does)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SANS = [
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
    "IP:10.96.0.1",
]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def ensure_pki(pki: Path) -> None:
    """Create ca.crt/ca.key, admin.crt/admin.key (system:masters, server+client) and sa.key once."""
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "admin.crt").exists() and (pki / "sa.key").exists():
        return
    ca_key, ca_crt = pki / "ca.key", pki / "ca.crt"
    _openssl(
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-days",
        "3650",
        "-subj",
        "/CN=tts-operator-dev-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca_crt),
    )
    ext = pki / "admin.ext"
    ext.write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        f"subjectAltName={','.join(SANS)}\n"
    )
    csr = pki / "admin.csr"
    _openssl(
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-subj",
        "/O=system:masters/CN=dev-admin",
        "-keyout",
        str(pki / "admin.key"),
        "-out",
        str(csr),
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca_crt),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "3650",
        "-extfile",
        str(ext),
        "-out",
        str(pki / "admin.crt"),
    )
    _openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    for p in pki.iterdir():
        if p.suffix == ".key":
            p.chmod(0o600)
