"""Document-level consent signals kept in sample metadata at import time.

WARC/WAT-derived and HTML-bearing records carry signals that WET text loses: the `X-Robots-Tag`,
`tdm-reservation` / `tdm-policy` (TDMRep) and `Content-Usage` (IETF AIPREF) response headers, and
`<meta name="robots|tdm-reservation|tdm-policy|...">` in the HTML head. `doc_signals(record)`
returns `{"http_headers": {...}, "html_meta": {...}}` with only those (nothing when none is
present, so KEY.json stays small); `glotta consent filter` reads exactly these two fields.

Record fields read: headers from `http_headers` / `headers` (a dict, or a list of [name, value]
pairs, or raw header text), HTML from `html` / `raw_html` / `content_html`. Only the first 64 KiB
of HTML are scanned, and the scan stops at `</head>` or `<body>`.
"""
from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

HEADERS = ("x-robots-tag", "tdm-reservation", "tdm-policy", "content-usage")
META_NAMES = ("robots", "tdm-reservation", "tdm-policy", "googlebot", "gptbot", "ccbot")
HTML_FIELDS = ("html", "raw_html", "content_html")
HEADER_FIELDS = ("http_headers", "headers")
MAX_HTML = 64 * 1024


class _Head(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: dict[str, list[str]] = {}
        self.done = False

    def handle_starttag(self, tag, attrs):
        if self.done:
            return
        if tag == "body":
            self.done = True
            return
        if tag == "meta":
            a = {k.lower(): (v or "") for k, v in attrs}
            name = a.get("name", "").strip().lower()
            if name in META_NAMES and "content" in a:
                self.found.setdefault(name, []).append(a["content"].strip())

    def handle_endtag(self, tag):
        if tag == "head":
            self.done = True


def html_meta(html: str | bytes) -> dict[str, str | list[str]]:
    if isinstance(html, bytes):
        html = html[:MAX_HTML].decode("utf-8", errors="replace")
    p = _Head()
    try:
        p.feed(html[:MAX_HTML])
    except (AssertionError, ValueError):  # a broken document: keep what was read before the damage
        pass
    return {k: v[0] if len(v) == 1 else v for k, v in p.found.items()}


def _header_items(raw: Any) -> list[tuple[str, str]]:
    if isinstance(raw, dict):
        return [(str(k), v) for k, v in raw.items()]
    if isinstance(raw, (list, tuple)):
        return [(str(p[0]), p[1]) for p in raw if isinstance(p, (list, tuple)) and len(p) == 2]
    if isinstance(raw, str):
        return [tuple(x.strip() for x in line.split(":", 1)) for line in raw.splitlines() if ":" in line]
    return []


def http_headers(raw: Any) -> dict[str, str | list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in _header_items(raw):
        if k.strip().lower() in HEADERS:
            vals = v if isinstance(v, list) else [v]
            out.setdefault(k.strip().lower(), []).extend(str(x) for x in vals)
    return {k: v[0] if len(v) == 1 else v for k, v in out.items()}


def doc_signals(record: dict[str, Any]) -> dict[str, dict]:
    """The consent signals of one imported record, as sample metadata fields."""
    out: dict[str, dict] = {}
    for f in HEADER_FIELDS:
        if record.get(f):
            h = http_headers(record[f])
            if h:
                out["http_headers"] = h
            break
    for f in HTML_FIELDS:
        if isinstance(record.get(f), (str, bytes)):
            m = html_meta(record[f])
            if m:
                out["html_meta"] = m
            break
    return out
