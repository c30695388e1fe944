"""Consent signals besides robots.txt: TDMRep, noai/noimageai, terms-of-service labels.

TDMRep (W3C CG report 2024): `/.well-known/tdmrep.json` is a list of
`{"location": pattern, "tdm-reservation": 0|1, "tdm-policy": url}`; patterns use robots-style
`*` and `$`; the first matching entry wins; a value other than 0 or 1 counts as unset. The HTTP
header `tdm-reservation` overrides the file, and the HTML `<meta name="tdm-reservation">`
overrides the header; a missing value never resets an earlier one.

Document-level signals are read from the document metadata when the import kept them:
  meta["http_headers"] (or meta["headers"]): {"X-Robots-Tag": ..., "tdm-reservation": ...}
  meta["html_meta"]: {"robots": "noai, noimageai", "tdm-reservation": "1"}
`noai` drops a text document; `noimageai` reserves images only, so it is flagged, not dropped.
An `X-Robots-Tag: <agent>: noai` applies only when <agent> is in the chosen agent set.

ToS labels are the paper's categories, strictest first; they are advisory unless `tos: enforce`,
which drops the labels in TOS_RESTRICTING.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from glotta.errors import DataError

TOS_LABELS = (
    "No Scraping & AI", "No Scraping", "No AI", "NC Only", "Non-Compete", "No Re-Distribution",
    "Conditional Use", "Unrestricted Use", "No Terms Pages",
)
TOS_RESTRICTING = {"No Scraping & AI", "No Scraping", "No AI"}


def _robots_pattern(value: str) -> re.Pattern:
    anchored = value.endswith("$")
    body = value[:-1] if anchored else value
    if not body.startswith(("/", "*")):
        body = "/" + body
    return re.compile(".*".join(re.escape(s) for s in body.split("*")) + ("$" if anchored else ""))


@dataclass
class TdmRep:
    rules: list[tuple[re.Pattern, str, int | None, str]]  # (pattern, location, reservation, policy)
    warning: str = ""

    @classmethod
    def parse(cls, text: str | bytes | None) -> "TdmRep":
        """Garbage parses to no rules with a warning: an unreadable reservation is not a reservation."""
        try:
            data = json.loads(text) if text else []
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
            return cls([], f"tdmrep.json is not JSON: {e}")
        if not isinstance(data, list):
            return cls([], "tdmrep.json is not a JSON array")
        rules = []
        for item in data:
            if not isinstance(item, dict) or not isinstance(item.get("location"), str):
                continue
            value = item.get("tdm-reservation")
            reservation = value if value in (0, 1) and not isinstance(value, bool) else None
            policy = item.get("tdm-policy") if isinstance(item.get("tdm-policy"), str) else ""
            rules.append((_robots_pattern(item["location"]), item["location"], reservation, policy))
        return cls(rules)

    def reserved(self, path: str) -> tuple[bool, str]:
        """(reserved, evidence) for a URL path; the first matching location decides."""
        for pattern, location, reservation, policy in self.rules:
            if pattern.match(path):
                ev = f"tdmrep.json location={location} tdm-reservation={reservation}"
                return reservation == 1, ev + (f" policy={policy}" if policy else "")
        return False, ""

    @property
    def reserves_all(self) -> bool:
        """True when the first rule matches every path and reserves: the origin can be decided without paths."""
        return bool(self.rules) and self.rules[0][1] in ("/", "*", "/*", "") and self.rules[0][2] == 1


def _lower_keys(d: object) -> dict[str, object]:
    return {str(k).lower(): v for k, v in d.items()} if isinstance(d, dict) else {}


def _values(v: object) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, (list, tuple)):
        return [x for x in v if isinstance(x, str)]
    return []


def doc_tdm_reservation(meta: dict) -> tuple[int | None, str]:
    """Document-level TDM reservation: (1|0, source) from the HTML meta, else the header, else (None, '')."""
    html = _lower_keys(meta.get("html_meta"))
    headers = _lower_keys(meta.get("http_headers") or meta.get("headers"))
    for source, table in (("html_meta", html), ("header", headers)):
        for v in _values(table.get("tdm-reservation")):
            if v.strip() in ("0", "1"):
                return int(v.strip()), f"{source} tdm-reservation: {v.strip()}"
    return None, ""


_SCOPED = re.compile(r"\s*([A-Za-z0-9_\-]+)\s*:\s*(.*)", re.S)
_NOT_AGENTS = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}


def doc_noai(meta: dict, agents_lower: frozenset[str]) -> tuple[str, str]:
    """('noai' | 'noimageai' | '', evidence) from X-Robots-Tag headers and the robots meta tag."""
    html = _lower_keys(meta.get("html_meta"))
    headers = _lower_keys(meta.get("http_headers") or meta.get("headers"))
    found = ""
    evidence = ""
    sources = [("X-Robots-Tag", v) for v in _values(headers.get("x-robots-tag"))]
    sources += [("meta robots", v) for v in _values(html.get("robots"))]
    for source, value in sources:
        m = _SCOPED.match(value)
        if m and m.group(1).lower() not in _NOT_AGENTS and m.group(1).lower() not in ("noai", "noimageai"):
            if m.group(1).lower() not in agents_lower and m.group(1) != "*":
                continue  # addressed to another crawler
            value = m.group(2)
        tokens = {t.strip().lower() for t in re.split(r"[,\s]+", value) if t.strip()}
        if "noai" in tokens:
            return "noai", f"{source}: {value.strip()}"
        if "noimageai" in tokens and not found:
            found, evidence = "noimageai", f"{source}: {value.strip()}"
    return found, evidence


class TosLabels:
    """Per-domain ToS labels from a CSV (`domain,label`) or JSON ({domain: label}) file.

    A label is looked up for the exact host first, then for its registrable domain."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels

    @classmethod
    def load(cls, path: str | Path) -> "TosLabels":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"ToS label file not found: {path}")
        if path.suffix == ".json":
            raw = json.loads(path.read_text(encoding="utf-8"))
            rows = list(raw.items()) if isinstance(raw, dict) else []
        else:
            with open(path, newline="", encoding="utf-8") as f:
                rows = [(r[0], r[1]) for r in csv.reader(f) if len(r) >= 2 and r[0] != "domain"]
        labels = {}
        for domain, label in rows:
            if label not in TOS_LABELS:
                raise DataError(f"{path}: unknown ToS label {label!r} for {domain!r} (known: {', '.join(TOS_LABELS)})")
            labels[domain.strip().lower()] = label
        return cls(labels)

    def label(self, host: str, reg_domain: str) -> str:
        return self.labels.get(host) or self.labels.get(reg_domain) or ""


def doc_content_usage(meta: dict) -> str:
    """Evidence when an IETF AIPREF `Content-Usage` response header says train-ai=n, else ''."""
    headers = _lower_keys(meta.get("http_headers") or meta.get("headers"))
    for v in _values(headers.get("content-usage")):
        for part in v.split(","):
            k, _, val = part.strip().partition("=")
            if k.strip().lower() == "train-ai" and val.strip().lower() in ("n", "no"):
                return f"Content-Usage: {v.strip()}"
    return ""


_LICENSE_SPLIT = re.compile(r"[^A-Za-z0-9]+")


def license_match(license_value: object, tokens: frozenset[str]) -> str:
    """The license text when one of its tokens (`CC-BY-NC-4.0` -> cc, by, nc, 4, 0) is in `tokens`."""
    if not tokens or not isinstance(license_value, str):
        return ""
    parts = {t.lower() for t in _LICENSE_SPLIT.split(license_value) if t}
    return license_value if parts & tokens else ""
