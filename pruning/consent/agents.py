"""Agent policies: which crawler tokens a document must be fetchable by to count as consented.

A document is restricted when ANY agent of the chosen set may not fetch its URL. Agents
without their own robots.txt group fall back to the `*` group (RFC 9309), so every named
policy implicitly includes `*`; the `*` policy asks only about the `*` group.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from glotta.errors import ConfigError

AGENT_FILE = "ai_agents.json"

# Crawlers whose stated purpose is collecting model-training data (consent note §2).
TRAINING = (
    "GPTBot", "ClaudeBot", "anthropic-ai", "CCBot", "Google-Extended", "Applebot-Extended",
    "Bytespider", "Meta-ExternalAgent", "FacebookBot", "cohere-training-data-crawler", "AI2Bot",
    "Ai2Bot-Dolma", "Amazonbot", "PanguBot", "Diffbot", "omgili", "omgilibot", "Timpibot",
    "img2dataset", "Webzio-Extended",
)

# Organisations as the Consent in Crisis paper groups agents (its BOT_TRACKER); the report
# shows each organisation at the strictest status of its agents.
ORGANISATIONS: dict[str, tuple[str, ...]] = {
    "OpenAI": ("GPTBot", "ChatGPT-User"),
    "Google": ("Google-Extended",),
    "Common Crawl": ("CCBot",),
    "Anthropic": ("ClaudeBot", "anthropic-ai", "Claude-Web"),
    "Cohere": ("cohere-ai", "cohere-training-data-crawler"),
    "Meta": ("FacebookBot", "Meta-ExternalAgent"),
    "Apple": ("Applebot-Extended",),
    "ByteDance": ("Bytespider",),
    "Amazon": ("Amazonbot",),
}

STAR = "*"  # querying protego with "*" matches only the `*` group


@dataclass(frozen=True)
class AgentPolicy:
    name: str  # "training", "all-ai", "*" or "custom"
    agents: tuple[str, ...]
    version: str  # sha256 prefix of the agent list: goes into every audit row

    @classmethod
    def of(cls, name: str, agents) -> "AgentPolicy":
        seen, out = set(), []
        for a in agents:
            if a.lower() not in seen:  # the public list has case-only duplicates
                seen.add(a.lower())
                out.append(a)
        digest = hashlib.sha256("\n".join(out).encode()).hexdigest()[:12]
        return cls(name, tuple(out), digest)


@lru_cache(maxsize=1)
def ai_agents() -> dict:
    """The shipped list (facts from ai-robots-txt/ai.robots.txt): {source, agents: [{name, ...}]}."""
    with resources.files("glotta.pruning.consent").joinpath(AGENT_FILE).open("r", encoding="utf-8") as f:
        return json.load(f)


def resolve_policy(spec: str) -> AgentPolicy:
    """`training` | `all-ai` | `*` | comma-separated agent names (a custom list)."""
    spec = spec.strip()
    if spec == "training":
        return AgentPolicy.of("training", TRAINING)
    if spec == "all-ai":
        return AgentPolicy.of("all-ai", [a["name"] for a in ai_agents()["agents"]])
    if spec == STAR:
        return AgentPolicy.of(STAR, [STAR])
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if not re.fullmatch(r"[A-Za-z0-9_.\-/ ]+|\*", n)]
    if not names or bad:
        raise ConfigError(f"agents: expected training, all-ai, * or a comma-separated list of agent names, got {spec!r}")
    return AgentPolicy.of("custom", names)


def convert_ai_robots(src: str | Path) -> dict:
    """Turn ai.robots.txt's robots.json into our shipped file (facts only, sorted, deduplicated by case).

    Refresh: python -c "import json,glotta.pruning.consent.agents as a; print(json.dumps(a.convert_ai_robots('robots.json'), indent=1))"
    """
    raw = Path(src).read_bytes()
    data = json.loads(raw)
    agents, seen = [], set()
    for name in sorted(data, key=str.lower):
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        info = data[name]
        agents.append({
            "name": name,
            "operator": info.get("operator", ""),
            "respect": info.get("respect", ""),
            "function": info.get("function", ""),
        })
    return {
        "source": "https://github.com/ai-robots-txt/ai.robots.txt robots.json (MIT)",
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "agents": agents,
    }
