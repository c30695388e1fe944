"""Fuzz cases in a forked child, each with a time limit (the reader and index fuzz tests).

A hang in C++ with the GIL released cannot be interrupted from Python; a child process can be
killed. The child runs `child(conn, *args)`, which sends (i, result) after each case; the parent
waits at most `limit` seconds for each and fails naming the case that did not come back.
"""
from __future__ import annotations

import multiprocessing as mp

import pytest


def run_cases(child, args: tuple, names: list[str], limit: float, what: str) -> dict[int, object]:
    ctx = mp.get_context("fork")
    parent, conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(conn, *args), daemon=True)
    proc.start()
    conn.close()
    results: dict[int, object] = {}
    try:
        for _ in names:
            if not parent.poll(limit):
                pytest.fail(f"{what} hung (> {limit}s) on case {names[len(results)]!r}")
            i, res = parent.recv()
            results[i] = res
    finally:
        proc.kill()
        proc.join()
    return results
