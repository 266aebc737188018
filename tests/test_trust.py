"""The certificate authorities both modes trust: the system's and the user's together."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from batchrunner import trust
from batchrunner.errors import UsageError


def _subjects(context: ssl.SSLContext) -> set[str]:
    return {str(cert["subject"]) for cert in context.get_ca_certs()}


def test_a_users_ca_file_adds_to_the_systems_roots_not_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    systems = set(trust.root_certificates())
    if not systems:
        pytest.skip("this machine has no system CA bundle")
    ca = trustme.CA(organization_name="batchrunner test CA")
    ca_file = tmp_path / "own-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    systems_own = _subjects(trust.ssl_context())
    assert systems_own and not any("batchrunner test CA" in s for s in systems_own)

    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    both = _subjects(trust.ssl_context())
    assert systems_own < both and any("batchrunner test CA" in s for s in both)
    assert set(trust.root_certificates()) == systems | {str(ca_file)}


def test_a_bundle_with_comments_in_any_language_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """certifi's and some distributions' bundles carry non-ASCII comments between blocks."""
    ca = trustme.CA(organization_name="Főtanúsítvány CA")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes("# Főtanúsítvány, 証明書\n".encode() + ca.cert_pem.bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    assert any("Főtanúsítvány CA" in s for s in _subjects(trust.ssl_context()))


def test_a_system_with_a_certificate_folder_and_no_bundle_still_trusts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some Python builds find no bundle file, only the system's folder (/etc/ssl/certs)."""
    folder = tmp_path / "system-certs"
    folder.mkdir()
    ca = trustme.CA(organization_name="system folder CA")
    ca.cert_pem.write_to_path(str(folder / "system-root.pem"))
    layout = ssl.DefaultVerifyPaths(
        "", "", "SSL_CERT_FILE", str(tmp_path / "no-bundle.pem"), "SSL_CERT_DIR", str(folder)
    )
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: layout)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    assert list(trust.root_certificates()) == [str(folder / "system-root.pem")]
    assert any("system folder CA" in s for s in _subjects(trust.ssl_context()))


def test_a_folder_of_certificates_is_read_once_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    ca = trustme.CA(organization_name="folder CA")
    ca.cert_pem.write_to_path(str(folder / "a.pem"))
    ca.cert_pem.write_to_path(str(folder / "0123abcd.0"))  # OpenSSL's hash-named copy
    (folder / "notes.txt").write_text("not a certificate")
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(folder))
    assert list(trust.users_certificates()) == [str(folder / "0123abcd.0")]
    assert any("folder CA" in s for s in _subjects(trust.ssl_context()))


def test_a_ca_file_that_is_not_certificates_is_named_in_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "broken.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    monkeypatch.setenv("SSL_CERT_FILE", str(bad))
    with pytest.raises(UsageError, match=r"could not load the trusted certificates from .*broken"):
        trust.ssl_context()
