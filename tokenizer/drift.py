"""What a vocabulary extension did: base-language drift and target-language gains.

- base side (languages the base model already served): lines whose token ids changed and the
  token count before/after; plus a check that decoding base ids with the new model gives the
  same text (old ids must keep their meaning).
- target side: fertility and premium before/after, on parallel text when given (held-out),
  otherwise on shard text (which the candidate model was trained on: optimistic, and labelled).
"""
from __future__ import annotations

import sentencepiece as spm

from glotta.tokenizer.metrics import Vocab, byte_premium, count, parallel_premium, summarize


def premiums(sp: spm.SentencePieceProcessor, parallel: dict, shards: dict, reference: str,
             langs: list[str]) -> dict[str, float | None]:
    """Premium per language: Petrov's on parallel text when it has the language, else per byte."""
    vocab = Vocab(sp)
    out: dict[str, float | None] = {}
    if reference in parallel:
        keys = sorted(parallel[reference])
        ref = count(vocab, [parallel[reference][k] for k in keys], keys)
    else:
        ref = None
    ref_shards = count(vocab, shards[reference]) if shards.get(reference) else None
    for lang in langs:
        if lang in parallel and ref is not None:
            keys = sorted(parallel[lang])
            out[lang] = parallel_premium(count(vocab, [parallel[lang][k] for k in keys], keys), ref)[0]
        elif shards.get(lang) and ref_shards is not None:
            out[lang] = byte_premium(count(vocab, shards[lang]), ref_shards)
        else:
            out[lang] = None
    return out


def base_drift(old: spm.SentencePieceProcessor, new: spm.SentencePieceProcessor, lines: list[str]) -> dict:
    before, after = old.encode(lines), new.encode(lines)
    changed = sum(a != b for a, b in zip(before, after))
    longer = sum(len(b) > len(a) for a, b in zip(before, after))
    t0, t1 = sum(map(len, before)), sum(map(len, after))
    decodes_same = sum(new.decode(ids) == old.decode(ids) for ids in before)
    return {
        "lines": len(lines),
        "lines_changed": changed,
        "lines_more_tokens": longer,
        "tokens_before": t0,
        "tokens_after": t1,
        "token_change_pct": 100.0 * (t1 - t0) / t0 if t0 else 0.0,
        "old_ids_decode_same": decodes_same,
    }


def drift_report(old: spm.SentencePieceProcessor, new: spm.SentencePieceProcessor, base_texts: dict[str, list[str]],
                 parallel: dict, target_shards: dict[str, list[str]], reference: str, langs: list[str]) -> dict:
    base = {lang: base_drift(old, new, lines) for lang, lines in sorted(base_texts.items()) if lines}
    total = {k: sum(b[k] for b in base.values()) for k in ("lines", "lines_changed", "lines_more_tokens", "tokens_before", "tokens_after")}
    total["token_change_pct"] = (
        100.0 * (total["tokens_after"] - total["tokens_before"]) / total["tokens_before"] if total["tokens_before"] else 0.0
    )
    shards_for_premium = dict(target_shards)
    if reference in base_texts:
        shards_for_premium[reference] = base_texts[reference]
    p_old = premiums(old, parallel, shards_for_premium, reference, langs)
    p_new = premiums(new, parallel, shards_for_premium, reference, langs)
    target = {}
    v_old, v_new = Vocab(old), Vocab(new)
    for lang in langs:
        if lang in parallel:
            lines, source = list(parallel[lang].values()), "parallel"
        else:
            lines, source = target_shards.get(lang, []), "shards (training text of the candidates)"
        if not lines:
            continue
        s_old, s_new = summarize(lang, count(v_old, lines)), summarize(lang, count(v_new, lines))
        target[lang] = {
            "source": source,
            "fertility_unit": s_old["fertility_unit"],
            "fertility_before": s_old["fertility"],
            "fertility_after": s_new["fertility"],
            "tokens_before": s_old["tokens"],
            "tokens_after": s_new["tokens"],
            "premium_before": p_old[lang],
            "premium_after": p_new[lang],
        }
    return {"base": base, "base_total": total, "target": target}
