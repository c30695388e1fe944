"""PNG chart for `eval`: token premium and fertility per language, tokenizers side by side."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def premium_chart(result: dict, path: str | Path) -> Path:
    names = list(result["tokenizers"])
    langs = sorted({lang for t in result["tokenizers"].values() for lang in t["langs"]})
    x = np.arange(len(langs))
    width = 0.8 / max(len(names), 1)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 0.7 * len(langs) * max(1, len(names) / 2)), 7), sharex=True)
    kinds = set()
    for i, name in enumerate(names):
        rows = result["tokenizers"][name]["langs"]
        prem = [rows.get(lang, {}).get("premium") or np.nan for lang in langs]
        fert = [rows.get(lang, {}).get("fertility") or np.nan for lang in langs]
        kinds |= {r["premium_kind"] for r in rows.values() if r.get("premium_kind")}
        ax1.bar(x + i * width - 0.4 + width / 2, prem, width, label=name)
        ax2.bar(x + i * width - 0.4 + width / 2, fert, width, label=name)
    ax1.axhline(1.0, color="black", linewidth=0.8)
    kind = " / ".join(sorted(kinds)) or "n/a"
    ax1.set_ylabel(f"premium vs {result['reference']} ({kind})")
    ax1.set_title("Token premium per language (1.0 = parity with the reference)")
    ax1.legend(fontsize=8)
    unit = {lang: next((t["langs"][lang]["fertility_unit"] for t in result["tokenizers"].values()
                        if lang in t["langs"]), "word") for lang in langs}
    ax2.set_ylabel("fertility (tokens/word; * = tokens/char)")
    ax2.set_xticks(x, [f"{lang}*" if unit[lang] == "char" else lang for lang in langs])
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
