"""One network configuration for both modes: the proxy as curl and the SDK read it, identity and
extra headers, the query string; through a real forwarding proxy on 127.0.0.1, asserted on the
proxy's side and on the server's."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest
import trustme
from click.testing import CliRunner, Result

from batchrunner.cli import cli
from batchrunner.dialects.openai import endpoint_url
from batchrunner.errors import UsageError
from batchrunner.fake import FakeConfig, FakeServer, run_in_thread
from batchrunner.network import Network, parse_header, parse_query, proxy_for, split_query
from batchrunner.providers import merged_headers, merged_query
from batchrunner.redact import mask, treat_as_secret
from batchrunner.settings import RunSettings
from tests.conftest import TEST_KEY, chat_line, write_jsonl
from tests.forward_proxy import forward_proxy
from tests.test_cli import status_json

PROXY = "http://proxy.corp:3128"
HTTPS = "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("url", "explicit", "env", "expected"),
    [
        (HTTPS, None, {}, None),
        (HTTPS, None, {"HTTPS_PROXY": PROXY}, PROXY),
        (HTTPS, None, {"https_proxy": PROXY, "HTTPS_PROXY": "http://other:1"}, PROXY),
        (HTTPS, None, {"HTTP_PROXY": PROXY}, None),  # an http proxy is for http URLs
        ("http://api.example.com/v1", None, {"HTTP_PROXY": PROXY}, PROXY),
        (HTTPS, None, {"ALL_PROXY": PROXY}, PROXY),
        (HTTPS, None, {"all_proxy": PROXY, "NO_PROXY": "*"}, None),
        (HTTPS, None, {"HTTPS_PROXY": PROXY, "NO_PROXY": "example.com,openai.com"}, None),
        (HTTPS, None, {"HTTPS_PROXY": PROXY, "no_proxy": ".openai.com"}, None),
        (HTTPS, None, {"HTTPS_PROXY": PROXY, "NO_PROXY": "ai.com"}, PROXY),  # not a suffix
        (HTTPS, None, {"HTTPS_PROXY": PROXY, "NO_PROXY": "api.openai.com:8443"}, PROXY),
        (HTTPS, None, {"HTTPS_PROXY": PROXY, "NO_PROXY": "api.openai.com:443"}, None),
        ("http://10.1.2.3:8000/v1", None, {"HTTP_PROXY": PROXY, "NO_PROXY": "10.0.0.0/8"}, None),
        ("http://11.1.2.3:8000/v1", None, {"HTTP_PROXY": PROXY, "NO_PROXY": "10.0.0.0/8"}, PROXY),
        ("http://[fd00::5]:80/v1", None, {"HTTP_PROXY": PROXY, "NO_PROXY": "[fd00::5]"}, None),
        ("http://127.0.0.1:8000/v1", None, {"HTTP_PROXY": PROXY}, None),  # loopback: local
        ("http://localhost:8000/v1", None, {"ALL_PROXY": PROXY}, None),
        ("http://[::1]:8000/v1", None, {"ALL_PROXY": PROXY}, None),
        ("http://127.0.0.1:8000/v1", "http://mine:1", {}, "http://mine:1"),  # asked: obeyed
        (HTTPS, "http://mine:1", {"NO_PROXY": "*"}, "http://mine:1"),
    ],
)
def test_the_proxy_is_read_as_curl_and_the_sdk_read_it(
    url: str, explicit: str | None, env: dict[str, str], expected: str | None
) -> None:
    assert proxy_for(url, explicit, env) == expected


def test_proxy_credentials_are_kept_apart_from_its_address() -> None:
    network = Network(proxy="http://alice:s%40cret@127.0.0.1:3128")
    assert network.proxy_credentials == ("alice", "s@cret")
    assert network.proxy_without_credentials == "http://127.0.0.1:3128"
    assert Network(proxy="http://127.0.0.1:3128").proxy_credentials is None


def test_headers_and_query_parameters_are_parsed_and_bad_ones_named_without_values() -> None:
    assert parse_header("Helicone-Auth: Bearer sk-x") == ("Helicone-Auth", "Bearer sk-x")
    assert parse_query("api-version=2024-10-21") == ("api-version", "2024-10-21")
    for bad in ("no colon", "Bad Name: x", "X-Empty:"):
        with pytest.raises(UsageError, match="--header takes 'Name: value'"):
            parse_header(bad)
    with pytest.raises(UsageError) as refused:
        parse_header("X Secret: sk-do-not-print-me")
    assert "sk-do-not-print-me" not in str(refused.value)
    with pytest.raises(UsageError, match="--query takes name=value"):
        parse_query("version")


def test_a_base_url_with_a_query_keeps_it_after_each_path() -> None:
    """An Azure deployment URL: the path goes before `?api-version=`, not after it."""
    base = "https://r.openai.azure.com/openai/deployments/gpt-4o-mini?api-version=2024-10-21"
    path, query = split_query(base)
    assert (path, query) == (
        "https://r.openai.azure.com/openai/deployments/gpt-4o-mini",
        (("api-version", "2024-10-21"),),
    )
    assert endpoint_url(path, "/v1/chat/completions", query) == (
        "https://r.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions"
        "?api-version=2024-10-21"
    )


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


WAIT = ("--wait", "--poll-interval", "0.05")
IDENTITY = ("openai-organization", "openai-project", "x-title", "authorization")


def identities(server: FakeServer, paths: tuple[str, ...]) -> set[tuple[str | None, ...]]:
    """The identity headers and query of every request the server saw on these paths."""
    return {
        (*(seen.headers.get(name) for name in IDENTITY), seen.query)
        for seen in server.received
        if seen.path.startswith(paths)
    }


def test_both_modes_go_through_one_proxy_with_the_same_identity_and_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy (with its own password) carries every request of both modes of a job; the
    server sees the same organization, project, extra header and query from both; none of
    the secrets reaches the ledger or the output."""
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-from-env")
    password = "proxy-pa55word-not-for-the-ledger"
    gateway_key = "gw-key-0123456789-not-for-the-ledger"
    config = FakeConfig(seed=7, record_requests=True, batch_validating_s=0.05)
    with forward_proxy(("alice", password)) as proxy, run_in_thread(config) as server:
        proxied = proxy.url.replace("http://", f"http://alice:{password}@")
        db = tmp_path / "ledger.db"
        common = (
            "--db", f"sqlite:///{db}",
            "--base-url", server.base_url + "?tenant=acme",
            "--proxy", proxied,
            "--header", "X-Title: batchrunner tests",
            "--header", f"X-Gateway-Key: {gateway_key}",
            "--organization", "org-flag",
        )  # fmt: skip
        job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(6)])
        concurrent = invoke("submit", str(job), *common, "-v")
        assert concurrent.exit_code == 0, concurrent.stderr
        batch = invoke("submit", str(job), "--new", "--mode", "batch", *WAIT, *common)
        assert batch.exit_code == 0, batch.stderr
    online = identities(server, ("/v1/chat/completions",))
    offline = identities(server, ("/v1/files", "/v1/batches"))
    expected = ("org-flag", "proj-from-env", "batchrunner tests", f"Bearer {TEST_KEY}")
    assert online == offline == {(*expected, "tenant=acme")}
    assert {seen.headers["x-gateway-key"] for seen in server.received} == {gateway_key}
    through = [seen.target.split("?")[0].removeprefix(server.base_url) for seen in proxy.seen]
    assert through.count("/chat/completions") == 6  # every online request took the proxy
    assert {"/files", "/batches"} <= set(through)  # and so did the Batch API's
    assert len(proxy.seen) == len(server.received) and proxy.refused == 0
    shown = concurrent.output + batch.output
    for secret in (password, gateway_key):
        assert secret not in shown
        for file in tmp_path.glob("ledger.db*"):
            assert secret.encode() not in file.read_bytes()


@pytest.mark.parametrize("mode", ["concurrent", "batch"])
@pytest.mark.parametrize("tunnelled", [False, True], ids=["http", "https-connect"])
def test_a_proxy_that_refuses_the_credentials_stops_the_job_and_shows_no_password(
    mode: str, tunnelled: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """407 from the proxy, to a plain request or to CONNECT: the job's proxy credentials are
    wrong, so the job stops (exit 3, resumable) without failing an item or showing them."""
    context = None
    if tunnelled:
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
    with (
        forward_proxy(("alice", "right-password-0000")) as proxy,
        run_in_thread(ssl_context=context) as server,
    ):
        wrong = proxy.url.replace("http://", "http://alice:wrong-password-0000@")
        job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
        extra = ("--mode", "batch", *WAIT) if mode == "batch" else ()
        db = f"sqlite:///{tmp_path}/l.db"
        result = invoke(
            "submit", str(job), "--db", db, "--base-url", server.base_url, "--proxy", wrong, *extra
        )  # fmt: skip
    assert proxy.refused >= 1 and server.total_requests == 0
    assert result.exit_code == 3, result.stderr  # stopped, resumable: no item failed for it
    assert re.search(
        r"stopped early \(auth: (POST \S+ HTTP 407: )?the proxy wants credentials", result.stderr
    )
    assert "resume with: batchrunner run 1" in result.stderr
    assert "wrong-password-0000" not in result.output
    (status,) = status_json(db)["jobs"]
    assert status["counts"].get("failed", 0) == 0


def test_the_environments_proxy_never_carries_loopback_traffic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local server is local: HTTP_PROXY set and no NO_PROXY, both modes still go direct."""
    with forward_proxy() as proxy, run_in_thread() as server:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
        common = ("--db", f"sqlite:///{tmp_path}/l.db", "--base-url", server.base_url)
        assert invoke("submit", str(job), *common).exit_code == 0
        batch = invoke("submit", str(job), "--new", "--mode", "batch", *WAIT, *common)
        assert batch.exit_code == 0, batch.stderr
    assert proxy.seen == [] and server.total_requests == 3
    assert server.batch_api.batches_created == 1


def test_a_run_without_the_headers_the_job_was_submitted_with_says_so(
    tmp_path: Path, fake: FakeServer
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [chat_line(0)])
    common = ("--db", f"sqlite:///{tmp_path}/l.db", "--base-url", fake.base_url)
    recorded = invoke("submit", str(job), *common, "--detach", "--header", "X-Tenant: acme-1")
    assert recorded.exit_code == 0, recorded.stderr
    bare = invoke("run", *common)
    assert bare.exit_code == 0 and "submitted with X-Tenant, which are not stored" in bare.stderr
    assert "acme-1" not in bare.stderr
    again = invoke("run", *common, "--header", "X-Tenant: acme-1")  # nothing left, no warning
    assert again.exit_code == 0 and "X-Tenant" not in again.stderr


def test_both_modes_tunnel_through_the_proxy_to_a_server_with_its_own_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS through a proxy that wants credentials (CONNECT with Proxy-Authorization), to a
    server whose certificate authority is trusted only by SSL_CERT_FILE: the openai SDK of
    batch mode trusts what concurrent mode trusts."""
    ca = trustme.CA()
    ca_file = tmp_path / "own-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    config = FakeConfig(seed=7, record_requests=True)
    with (
        forward_proxy(("carol", "tunnel-pass-1234")) as proxy,
        run_in_thread(config, ssl_context=context) as server,
    ):
        assert server.base_url.startswith("https://")
        proxied = proxy.url.replace("http://", "http://carol:tunnel-pass-1234@")
        job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(3)])
        common = (
            "--db", f"sqlite:///{tmp_path}/l.db", "--base-url", server.base_url,
            "--proxy", proxied, "--organization", "org-tls",
        )  # fmt: skip
        concurrent = invoke("submit", str(job), *common)
        assert concurrent.exit_code == 0, concurrent.stderr
        batch = invoke("submit", str(job), "--new", "--mode", "batch", *WAIT, *common)
        assert batch.exit_code == 0, batch.stderr
    port = server.base_url.split(":")[2].split("/")[0]
    assert proxy.seen and {seen.method for seen in proxy.seen} == {"CONNECT"}
    assert proxy.refused == 0  # every tunnel carried the credentials
    assert "tunnel-pass-1234" not in concurrent.output + batch.output
    assert {seen.target for seen in proxy.seen} == {f"127.0.0.1:{port}"}
    online = identities(server, ("/v1/chat/completions",))
    offline = identities(server, ("/v1/files", "/v1/batches"))
    assert online == offline and {row[0] for row in online} == {"org-tls"}


def test_a_users_header_replaces_the_same_header_whatever_its_case_key_included() -> None:
    identity = {"OpenAI-Organization": "org-env"}
    auth = {"Authorization": "Bearer sk-key"}
    given = (("openai-organization", "org-flag"), ("authorization", "Bearer gw-key"))
    headers, kept = merged_headers(identity, auth, given)
    assert headers == {"OpenAI-Organization": "org-flag", "Authorization": "Bearer gw-key"}
    assert kept == {}  # the key's own header gave way: no client sends both
    assert merged_query((("api-version", "A"), ("x", "1")), (("api-version", "B"),)) == (
        ("api-version", "B"),
        ("x", "1"),
    )


def test_both_modes_send_a_gateways_own_authorization_instead_of_the_key(
    tmp_path: Path,
) -> None:
    config = FakeConfig(seed=7, record_requests=True)
    with run_in_thread(config) as server:
        job = write_jsonl(tmp_path / "job.jsonl", [chat_line(i) for i in range(2)])
        common = (
            "--db", f"sqlite:///{tmp_path}/l.db", "--base-url", server.base_url + "?v=1",
            "--header", "authorization: Bearer gateway-key-0000", "--query", "v=2",
        )  # fmt: skip
        assert invoke("submit", str(job), *common).exit_code == 0
        batch = invoke("submit", str(job), "--new", "--mode", "batch", *WAIT, *common)
        assert batch.exit_code == 0, batch.stderr
    assert {seen.headers["authorization"] for seen in server.received} == {
        "Bearer gateway-key-0000"
    }
    assert {seen.query for seen in server.received} == {"v=2"}


def test_a_proxy_is_an_http_one_unless_it_says_and_other_kinds_are_refused_unshown() -> None:
    assert proxy_for(HTTPS, "proxy.corp:3128") == "http://proxy.corp:3128"
    assert (
        proxy_for(HTTPS, None, {"HTTPS_PROXY": "u:p4ss@proxy:3128"}) == "http://u:p4ss@proxy:3128"
    )
    assert Network(proxy="http://u:p4ss@proxy:3128").proxy_credentials == ("u", "p4ss")
    with pytest.raises(UsageError) as refused:
        proxy_for(HTTPS, None, {"ALL_PROXY": "socks5h://alice:hunter22@127.0.0.1:1080"})
    assert "hunter22" not in str(refused.value) and "http:// or https://" in str(refused.value)
    assert proxy_for(HTTPS, None, {"https_proxy": "", "HTTPS_PROXY": PROXY}) is None
    assert proxy_for(HTTPS, None, {"HTTPS_PROXY": PROXY, "NO_PROXY": "*.openai.com"}) is None
    assert proxy_for("http://[::ffff:127.0.0.1]:80/v1", None, {"HTTP_PROXY": PROXY}) is None
    assert proxy_for("http://api.localhost:80/v1", None, {"HTTP_PROXY": PROXY}) is None
    env = {"HTTP_PROXY": PROXY, "NO_PROXY": "fd00:0::5"}
    assert proxy_for("http://[fd00::5]:80/v1", None, env) is None


def test_a_bad_header_is_named_without_its_value_and_short_secrets_are_masked_whole() -> None:
    with pytest.raises(UsageError) as refused:
        parse_header("X-Api-Key gw_live_0123456789")
    assert "gw_live" not in str(refused.value)
    treat_as_secret("hunter2")
    assert mask("proxy said: 407 for alice:hunter2") == "proxy said: 407 for alice:***"


def test_secret_query_parameters_are_never_stored_and_a_run_is_told() -> None:
    settings = RunSettings(
        base_url="https://gw.example/v1?api_key=gw-SECRET-1&tenant=acme",
        query=(("api-version", "2024-10-21"), ("sig", "abc123")),
        headers=(("X-Title", "t"),),
    )
    stored = settings.stored()
    assert stored["base_url"] == "https://gw.example/v1?tenant=acme"
    assert stored["query"] == [("api-version", "2024-10-21")]
    assert stored["withheld"] == ["X-Title", "sig", "api_key"]
    assert "gw-SECRET-1" not in repr(stored) and "abc123" not in repr(stored)
