"""How requests reach the provider, decided once for a job and used by both modes alike: the
proxy, the headers every request carries and the query string (pure, apart from reading the
environment).

Proxies are read as Python's urllib and the openai SDK read them: `--proxy URL` first, else
for an https base URL `https_proxy` / `HTTPS_PROXY`, for an http one `http_proxy` /
`HTTP_PROXY`, then `all_proxy` / `ALL_PROXY` (the lower-case name wins, even set empty);
`no_proxy` / `NO_PROXY` lists hosts to reach directly (`*`, a host, a domain and its
subdomains as `.corp` or `*.corp`, an IP address or a CIDR block, each with an optional
`:port`). A proxy without a scheme is an http one (`proxy:3128`). A loopback address is never
sent through a proxy from the environment (a local server is local); `--proxy` is obeyed for
it too. A proxy's credentials may sit in its URL (`http://user:pass@proxy:3128`): they are
used, and never stored, logged or shown.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

from batchrunner.errors import UsageError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
# A query parameter (or header) whose name says it is a secret: never stored, always masked.
SECRET_NAME = re.compile(r"key|token|secret|passw|sig|auth|credential", re.IGNORECASE)


@dataclass(frozen=True)
class Network:
    """What every request of a job carries and where it goes through."""

    proxy: str | None = None  # its URL, credentials included
    headers: dict[str, str] = field(default_factory=dict)  # values may be secrets
    query: tuple[tuple[str, str], ...] = ()  # added to every request's URL

    @property
    def proxy_credentials(self) -> tuple[str, str] | None:
        """The proxy URL's user and password, if it has them."""
        if self.proxy is None:
            return None
        parts = urlsplit(self.proxy)
        if parts.username is None:
            return None
        return unquote(parts.username), unquote(parts.password or "")

    @property
    def proxy_without_credentials(self) -> str | None:
        if self.proxy is None:
            return None
        return urlunsplit(_without_credentials(urlsplit(self.proxy)))


def _without_credentials(parts: SplitResult) -> SplitResult:
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc)


PROXY_SCHEMES = ("http", "https")


def proxy_for(
    url: str, explicit: str | None = None, env: Mapping[str, str] | None = None
) -> str | None:
    """The proxy requests to `url` go through, or None for a direct connection."""
    if explicit:
        return _proxy_url(explicit)
    env = os.environ if env is None else env
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    proxy = _variable(env, scheme) or _variable(env, "all")
    if not proxy or _is_loopback(parts.hostname or ""):
        return None
    port = parts.port or (443 if scheme == "https" else 80)
    if _bypassed(parts.hostname or "", port, _variable(env, "no") or ""):
        return None
    return _proxy_url(proxy)


def _proxy_url(given: str) -> str:
    """The proxy's URL with its scheme (http:// when it names none); a scheme neither client
    takes (socks5://) is refused, naming the proxy without its credentials."""
    url = given if "://" in given else f"http://{given}"
    parts = urlsplit(url)
    if parts.scheme.lower() not in PROXY_SCHEMES or not parts.hostname:
        shown = urlunsplit(_without_credentials(parts))
        raise UsageError(f"the proxy {shown!r} is not usable: use an http:// or https:// proxy")
    return url


HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110's token


def parse_header(given: str) -> tuple[str, str]:
    """`Name: value` (as curl's -H takes it) -> (name, value). A wrong one is named by what
    comes before its colon, never by its value (which may be a key)."""
    name, colon, value = given.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not HEADER_NAME.match(name) or not value or "\n" in value or "\r" in value:
        shown = repr(name) if colon and HEADER_NAME.match(name) else "something without a name"
        raise UsageError(f"--header takes 'Name: value', got {shown} and no usable value")
    return name, value


def parse_query(given: str) -> tuple[str, str]:
    """`name=value` -> (name, value)."""
    name, equals, value = given.partition("=")
    if not equals or not name.strip():
        raise UsageError(f"--query takes name=value, got {given!r}")
    return name.strip(), value


def split_query(base_url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A base URL without its query string, and that query's parameters (an Azure deployment
    URL's `?api-version=`): each request's path goes before them, not after."""
    parts = urlsplit(base_url)
    query = tuple(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(query="", fragment="")), query


def _variable(env: Mapping[str, str], kind: str) -> str | None:
    """`KIND_proxy`, the lower-case name first (set empty, it means none), then upper case."""
    for name in (f"{kind}_proxy", f"{kind.upper()}_PROXY"):
        if name in env:
            return env[name].strip() or None
    return None


def _is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".")
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    address = _address(host)
    return address is not None and address.is_loopback


BASE_URL_NAMES = "OPENAI_BASE_URL or AZURE_OPENAI_ENDPOINT"
# Seconds to connect (TCP, TLS, a proxy's tunnel) in both modes, as the openai SDK's default:
# a server that does not take the connection by then is unreachable, and nothing was sent.
CONNECT_TIMEOUT_S = 5.0
# Names that only a local network resolves: mDNS, the reserved home and internal zones, a
# Kubernetes cluster's services, a Tailscale network's machines.
LOCAL_SUFFIXES = (".local", ".lan", ".internal", ".home.arpa", ".localdomain", ".svc", ".ts.net")
SHARED_ADDRESSES = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, Tailscale


def serves_locally(base_url: str) -> bool:
    """Whether a base URL names a server on this machine or the local network (loopback, a
    private, link-local or shared address, a one-label name such as a compose service's
    `vllm`, a `.local` / `.internal` / `.svc` name): its owner's, not a hosted API's."""
    try:
        host = (urlsplit(base_url).hostname or "").lower().rstrip(".")
    except ValueError as exc:
        raise UsageError(
            f"the base URL (--base-url, {BASE_URL_NAMES}) is not a URL: {exc}"
        ) from None
    if not host:  # the URL is not shown: it may hold a password
        raise UsageError(f"the base URL (--base-url, {BASE_URL_NAMES}) names no host")
    if _is_loopback(host):
        return True
    address = _address(host)
    if address is None:
        return "." not in host or host.endswith(LOCAL_SUFFIXES)
    return address.is_private or address.is_link_local or address in SHARED_ADDRESSES


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host is, IPv4-mapped IPv6 (::ffff:10.0.0.1) as its IPv4, else None."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether `no_proxy` names the host (curl's rules, CIDR blocks included)."""
    host = host.lower().rstrip(".")
    for entry in (e.strip().lower() for e in no_proxy.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, wanted_port = _entry_port(entry)
        if wanted_port is not None and wanted_port != port:
            continue
        if _host_matches(host, name):
            return True
    return False


def _entry_port(entry: str) -> tuple[str, int | None]:
    """`host:port`, `[v6]:port`, or a bare host / address / block."""
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        return address, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        if port.isdigit():
            return name, int(port)
    return entry, None


def _host_matches(host: str, name: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        try:
            if "/" in name:
                return address in ipaddress.ip_network(name, strict=False)
            return address == ipaddress.ip_address(name)  # fd00:0::5 is fd00::5
        except ValueError:
            return False
    name = name.removeprefix("*").lstrip(".").rstrip(".")
    return host == name or host.endswith("." + name)
