"""URL -> (origin, path) with the stated rules for bad input, and registrable domains for reports.

robots.txt applies per origin (scheme, host, port), so decisions are keyed by the exact origin
`https://sub.example.org[:port]`. Rules for odd input (each raises BadURL with a reason code
that the filter counts):
  * no url / not a string / empty           -> no_url
  * scheme other than http or https         -> bad_scheme   (mailto:, ftp:, data:, ...)
  * no host, or a host that is not a name   -> no_host
  * an IDN host is converted to its ASCII (punycode) form with Python's IDNA codec; a host
    the codec rejects                       -> bad_host
Default ports (80 for http, 443 for https) are dropped; userinfo is ignored.
"""
from __future__ import annotations

import hashlib

import re
from functools import lru_cache

from publicsuffixlist import PublicSuffixList

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.S)
_LABEL = r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?"
_HOST = re.compile(rf"{_LABEL}(?:\.{_LABEL})*|\[[0-9a-f:.]+\]")
DEFAULT_PORT = {"http": "80", "https": "443"}


class BadURL(ValueError):
    def __init__(self, reason: str, url: object):
        super().__init__(f"{reason}: {url!r}"[:300])
        self.reason = reason


_END = re.compile(r"[/?#]")
_FAST: dict[str, str | BadURL] = {}  # "https://netloc" -> origin or the BadURL it raised


def path_of(rest: str) -> str:
    """What follows `scheme://netloc` -> the path and query robots rules match ('' -> '/', no fragment)."""
    if not rest or rest[0] == "#":
        return "/"
    if "#" in rest:
        rest = rest.split("#", 1)[0]
    return rest if rest[0] == "/" else "/" + rest


def split_url(url: object) -> tuple[str, str]:
    """'https://Bücher.example:443/a?b' -> ('https://xn--bcher-kva.example', '/a?b')."""
    if isinstance(url, str):  # fast path: one regex search and one dict lookup per URL
        i = 8 if url.startswith("https://") else 7 if url.startswith("http://") else 0
        if i:
            m = _END.search(url, i)
            j = m.start() if m else len(url)
            head = url[:j]
            origin = _FAST.get(head)
            if origin is None:
                try:
                    origin = _origin(url[: i - 3], url[i:j])
                except BadURL as e:
                    origin = e
                if len(_FAST) >= 1 << 18:  # bounded (~250 B a head): 10^6 origins would hold ~250 MB
                    _FAST.clear()
                _FAST[head] = origin
            if isinstance(origin, BadURL):
                raise BadURL(origin.reason, url)
            return origin, path_of(url[j:])
    if not isinstance(url, str) or not url.strip():
        raise BadURL("no_url", url)
    m = _URL.match(url.strip())
    if m is None:
        raise BadURL("bad_scheme" if ":" in url else "no_host", url)
    scheme, netloc, rest = m.groups()
    origin = _origin(scheme, netloc)
    if rest.startswith("#") or not rest:
        rest = "/"
    elif not rest.startswith("/"):
        rest = "/" + rest
    return origin, rest.split("#", 1)[0]


@lru_cache(maxsize=1 << 18)
def _origin(scheme: str, netloc: str) -> str:
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORT:
        raise BadURL("bad_scheme", f"{scheme}://{netloc}")
    hostport = netloc.rpartition("@")[2]
    host, port = hostport, ""
    if not host.startswith("[") and ":" in host:
        host, _, port = host.rpartition(":")
    elif host.startswith("[") and "]:" in host:
        host, _, port = host.rpartition(":")
    host = host.rstrip(".").lower()
    if not host:
        raise BadURL("no_host", netloc)
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadURL("bad_host", netloc) from None
    if len(host) > 253 or not _HOST.fullmatch(host) or (port and not port.isdigit()):
        raise BadURL("bad_host", netloc)
    if port and port != DEFAULT_PORT[scheme]:
        return f"{scheme}://{host}:{int(port)}"
    return f"{scheme}://{host}"


def origin_of(url: str) -> str:
    return split_url(url)[0]


def host_of(origin: str) -> str:
    return origin.split("://", 1)[1].rsplit(":", 1)[0] if "]" not in origin else origin.split("://", 1)[1]


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the dated list shipped in the package: offline, private suffixes included


@lru_cache(maxsize=1 << 16)
def registrable_domain(origin: str) -> str:
    """eTLD+1 of the origin's host (for aggregation only); the host itself when it has none."""
    host = host_of(origin)
    return _psl().privatesuffix(host) or host


def owner(origin: str, n: int) -> int:
    """Stable bucket / owner rank of an origin in [0, n) (never Python's hash())."""
    return int.from_bytes(hashlib.blake2b(origin.encode(), digest_size=8).digest(), "big") % n
