"""Which certificate authorities a job's HTTPS connections trust, the same in both modes: the
system's (its trust store on macOS and Windows, OpenSSL's bundle elsewhere), plus the user's
own, added and not instead: `SSL_CERT_FILE` (a file of PEM certificates) and `SSL_CERT_DIR`
(a folder of them), as a self-hosted server or an intercepting proxy needs. Concurrent mode's
client also ships Mozilla's roots."""

from __future__ import annotations

import os
import platform
import ssl
from pathlib import Path

import truststore

from batchrunner.errors import UsageError


def system_ca_file() -> str | None:
    """OpenSSL's compiled-in CA bundle (Debian's /usr/lib/ssl/cert.pem), if the system has it;
    not SSL_CERT_FILE, which adds to it here."""
    cafile = ssl.get_default_verify_paths().openssl_cafile
    return cafile if cafile and os.path.isfile(cafile) else None


def users_certificates() -> dict[str, bytes]:
    """The PEM certificates SSL_CERT_FILE and SSL_CERT_DIR name, by source (for messages)."""
    found: dict[str, bytes] = {}
    cafile = os.environ.get("SSL_CERT_FILE")
    if cafile and os.path.isfile(cafile):
        found[cafile] = Path(cafile).read_bytes()
    folder = os.environ.get("SSL_CERT_DIR")
    if folder and os.path.isdir(folder):
        seen = set(found.values())  # OpenSSL's folders hold hash-named links to the same files
        for entry in sorted(Path(folder).iterdir()):
            if entry.is_file():
                pem = entry.read_bytes()
                if b"-----BEGIN CERTIFICATE-----" in pem and pem not in seen:
                    found[str(entry)] = pem
                    seen.add(pem)
    return found


def root_certificates() -> dict[str, bytes]:
    """Every certificate to add to a client that brings its own roots: the system's bundle and
    the user's, by source."""
    roots: dict[str, bytes] = {}
    system = system_ca_file()
    if system is not None:
        roots[system] = Path(system).read_bytes()
    for source, pem in users_certificates().items():
        if pem not in roots.values():  # SSL_CERT_FILE is often the system's bundle itself
            roots[source] = pem
    return roots


def ssl_context() -> ssl.SSLContext:
    """A context for Python clients (the openai SDK, its proxy connection) trusting what
    `root_certificates` says, with the platform's own verifier where it has one."""
    if platform.system() in ("Darwin", "Windows"):  # truststore adds what is loaded to the OS's
        context: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        sources = users_certificates()
    else:  # OpenSSL: truststore would reload the bundle on every handshake
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        sources = root_certificates()
    for source, pem in sources.items():
        try:
            context.load_verify_locations(cadata=pem.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            problem = f"could not load the trusted certificates from {source}: {exc}"
            raise UsageError(problem) from None
    return context
