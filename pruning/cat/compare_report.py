"""Comparison results as a table, as plain JSON and as a PNG of per-language deltas with intervals."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from glotta.pruning.cat.compare import Comparison, Decision, Interval


def _iv(iv: Interval) -> dict:
    return {"delta": iv.delta, "low": iv.low, "high": iv.high, "low95": iv.low95, "high95": iv.high95, "p": iv.p,
            "p_holm": iv.p_holm, "seeds": iv.per_seed, "se_docs": iv.se_docs, "se_seeds": iv.se_seeds, "df": iv.df}


def to_json(c: Comparison) -> dict:
    return {"alpha": c.alpha, "corrected_for": c.corrected_for, "bootstrap": c.bootstrap,
            "seed_noise_known": c.seed_noise_known, "langs": c.langs, "random_loss": c.baseline_loss,
            "methods": {m: {"loss": mc.loss, "seeds": mc.seeds, "mean": _iv(mc.mean), "worst": _iv(mc.worst),
                            "langs": {lang: _iv(iv) for lang, iv in mc.langs.items()},
                            "better_mean_and_worst": bool(mc.better_mean_and_worst)}
                        for m, mc in c.methods.items()}}


def decision_json(d: Decision) -> dict:
    return asdict(d)


def table(c: Comparison, title: str) -> str:
    """Markdown table: loss of random, then per method the delta vs random per language, mean, worst."""
    cols = c.langs + ["mean", "worst"]
    head = "| arm | " + " | ".join(cols) + " | p (Holm), mean / worst |"
    lines = [f"**{title}** (held-out NLL, nats/token; rows below random: method minus random, mean over seeds, "
             f"[{100 * (1 - c.alpha / c.corrected_for):.1f}% interval, Bonferroni over {c.corrected_for}])",
             "", head, "|" + "---|" * (len(cols) + 2)]
    lines.append("| random (loss) | " + " | ".join(f"{c.baseline_loss[k]:.3f}" for k in cols) + " | |")
    for m, mc in c.methods.items():
        ivs = [mc.langs[lang] for lang in c.langs] + [mc.mean, mc.worst]
        cells = [f"{iv.delta:+.3f} [{iv.low:+.3f}, {iv.high:+.3f}]{'*' if iv.better else ''}" for iv in ivs]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mc.mean.p_holm:.3f} / {mc.worst.p_holm:.3f} |")
    lines.append("")
    lines.append("`*` = the whole corrected interval is below zero (the method beats random).")
    return "\n".join(lines)


def plot(comparisons: dict[str, Comparison], path: Path) -> Path | None:
    """One panel per regime: per-language delta vs random with its corrected interval, per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a dependency; keep the benchmark's numbers even without it
        return None
    fig, axes = plt.subplots(1, len(comparisons), figsize=(6 * len(comparisons), 4.2), squeeze=False)
    for ax, (name, c) in zip(axes[0], comparisons.items()):
        cols = c.langs + ["mean", "worst"]
        n = max(1, len(c.methods))
        width = 0.8 / n
        for j, (m, mc) in enumerate(c.methods.items()):
            ivs = [mc.langs[lang] for lang in c.langs] + [mc.mean, mc.worst]
            xs = [i + (j - (n - 1) / 2) * width for i in range(len(cols))]
            ys = [iv.delta for iv in ivs]
            err = [[iv.delta - iv.low for iv in ivs], [iv.high - iv.delta for iv in ivs]]
            ax.errorbar(xs, ys, yerr=err, fmt="o", ms=3, capsize=2, label=m)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels(cols, rotation=45)
        ax.set_title(f"{name}: held-out NLL minus random")
        ax.set_ylabel("nats/token (below 0 = better)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
