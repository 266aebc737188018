"""Which certificate authorities a job's HTTPS connections trust, the same in both modes: the
system's (its trust store on macOS and Windows, OpenSSL's bundle or folder elsewhere), plus the
user's own, added and not instead: `SSL_CERT_FILE` (a file of PEM certificates) and
`SSL_CERT_DIR` (a folder of them), as a self-hosted server or an intercepting proxy needs.
Concurrent mode's client also ships Mozilla's roots."""

from __future__ import annotations

import os
import platform
import ssl
from pathlib import Path

import truststore

from batchrunner.errors import UsageError

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


def _system_sources() -> list[str]:
    """OpenSSL's compiled-in CA bundle (Debian's /usr/lib/ssl/cert.pem) if the system has one,
    else its certificate folder: not SSL_CERT_FILE / SSL_CERT_DIR, which add to these here."""
    paths = ssl.get_default_verify_paths()
    if paths.openssl_cafile and os.path.isfile(paths.openssl_cafile):
        return [paths.openssl_cafile]
    if paths.openssl_capath and os.path.isdir(paths.openssl_capath):
        return _pem_files(paths.openssl_capath)
    return []


def _users_sources() -> list[str]:
    found = []
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile and os.path.isfile(cafile):
        found.append(cafile)
    folder = os.environ.get("SSL_CERT_DIR")
    if folder and os.path.isdir(folder):
        found += _pem_files(folder)
    return found


def _pem_files(folder: str) -> list[str]:
    """The files of a folder that hold a certificate; OpenSSL's hash-named links to the same
    file count once."""
    seen: set[bytes] = set()
    found = []
    for entry in sorted(Path(folder).iterdir()):
        if not entry.is_file():
            continue
        pem = entry.read_bytes()
        if PEM_BEGIN in pem and pem not in seen:
            seen.add(pem)
            found.append(str(entry))
    return found


def _read(paths: list[str]) -> dict[str, bytes]:
    """Each file's bytes, a file already read under another name (SSL_CERT_FILE is often the
    system's bundle itself) once."""
    found: dict[str, bytes] = {}
    for path in paths:
        pem = Path(path).read_bytes()
        if pem not in found.values():
            found[path] = pem
    return found


def users_certificates() -> dict[str, bytes]:
    """The PEM files SSL_CERT_FILE and SSL_CERT_DIR name, by path (for messages)."""
    return _read(_users_sources())


def root_certificates() -> dict[str, bytes]:
    """Every certificate file to add to a client that brings its own roots: the system's and
    the user's, by path."""
    return _read(_system_sources() + _users_sources())


def ssl_context() -> ssl.SSLContext:
    """A context for Python clients (the openai SDK, its proxy connection) trusting what
    `root_certificates` says, with the platform's own verifier where it has one."""
    if platform.system() in ("Darwin", "Windows"):  # truststore adds what is loaded to the OS's
        context: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        sources = list(users_certificates())
    else:  # OpenSSL: truststore would reload the bundle on every handshake
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        sources = list(root_certificates())
    for source in sources:
        try:  # by path: OpenSSL skips what is not a certificate (comments in any language)
            context.load_verify_locations(cafile=source)
        except (ssl.SSLError, OSError, ValueError) as exc:
            problem = f"could not load the trusted certificates from {source}: {exc}"
            raise UsageError(problem) from None
    return context
