"""One stage command as a subprocess: full output to its log, the useful part to the console.

- stdout: the command's `--json` result(s) are cut out of the stream (one JSON document per rank
  that prints one) and returned; any other stdout line (the trainer's step lines, notices) is shown.
- stderr: progress events (glotta.progress line mode) drive the runner's own bars; the trainer's
  `step N  loss X ... tok/s Y` lines drive a training bar with an ETA.
- Library noise (Python warnings, Megatron/Apex/TE/torch notices, the torchrun OMP banner) goes to
  the log only, counted; `-v` shows it. A line that several ranks print identically is shown once.
"""
from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from glotta.progress import EVENT_PREFIX, console

STEP_LINE = re.compile(r"^step\s+(\d+)\s+loss\s+([0-9.naninf]+).*?tok/s\s+([0-9,]+)")
NOISE = re.compile(
    r"(Warning|warnings\.warn|DeprecationWarning|FutureWarning|UserWarning|^\s*warn\(|"
    r"megatron|apex|transformer_engine|Transformer Engine|NCCL|gloo|OMP_NUM_THREADS|^\*{10,}|"
    r"^\s+(return|self\.|super\(\)|import |from |def |\w+ = )|TORCH_|torch\.distributed)",
    re.IGNORECASE,
)
# never noise: glotta's own messages and log records (logging format "LEVEL glotta.module: ...")
OURS = re.compile(r"^(glotta|error|config error|data error|step |(DEBUG|INFO|WARNING|ERROR|CRITICAL) glotta\.)", re.IGNORECASE)
PLAIN_EVERY_S = 10.0  # progress lines when the console is not a terminal (CI logs, `| tee`)


@dataclass
class CommandOutput:
    rc: int
    documents: list = field(default_factory=list)  # parsed --json documents, in the order printed
    hidden: int = 0  # library-noise lines kept in the log only


class _Display:
    """Bars on a terminal, throttled plain lines elsewhere."""

    def __init__(self, stage: str, total_steps: int | None):
        self.stage, self.total_steps = stage, total_steps
        self.live = console.is_terminal
        self.bars: dict[str, int] = {}
        self.plain_last: dict[str, float] = {}
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), console=console, disable=not self.live, transient=False,
        )  # fmt: skip
        self.t0 = time.monotonic()

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)

    def update(self, key: str, description: str, completed: float, total: float | None) -> None:
        if self.live:
            if key not in self.bars:
                self.bars[key] = self.progress.add_task(description, total=total)
            self.progress.update(self.bars[key], description=f"{self.stage}: {description}", completed=completed, total=total)
            return
        now, done = time.monotonic(), total is not None and completed >= total
        if done or now - self.plain_last.get(key, 0.0) >= PLAIN_EVERY_S:
            self.plain_last[key] = now
            of = f"/{total:,.0f}" if total else ""
            eta = ""
            if total and completed and not done:
                eta = f"  ETA {(now - self.t0) / completed * (total - completed):.0f} s"
            console.print(f"{self.stage}: {description} {completed:,.0f}{of}{eta}", markup=False, highlight=False, soft_wrap=True)

    def step(self, step: int, loss: str, tok_s: str) -> None:
        self.update("train", f"step · loss {loss} · {tok_s} tok/s", step, self.total_steps)

    def line(self, text: str) -> None:
        console.print(escape(text), highlight=False, soft_wrap=True)


def run_command(cmd: list[str], env: dict, log_path: Path, stage: str, total_steps: int | None = None,
                verbose: bool = False) -> CommandOutput:
    """Run `cmd`; everything goes to `log_path`, the useful part to the console (see module doc)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    q: Queue = Queue()

    def pump(stream, name):
        for raw in stream:
            q.put((name, raw))
        q.put((name, None))

    threads = [threading.Thread(target=pump, args=(s, n), daemon=True) for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for t in threads:
        t.start()
    result = CommandOutput(rc=0)
    doc: list[str] | None = None
    shown: set[str] = set()
    open_streams = 2
    with open(log_path, "wb") as log, _Display(stage, total_steps) as show:
        while open_streams:
            name, raw = q.get()
            if raw is None:
                open_streams -= 1
                continue
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if text.startswith(EVENT_PREFIX):  # progress events are not worth keeping in the log
                ev = json.loads(text[len(EVENT_PREFIX) :])
                show.update(f"p{ev['id']}", ev["d"], ev["c"], ev["t"])
                continue
            log.write(raw)
            log.flush()
            if name == "out" and (doc is not None or text in ("{", "[") or _one_line_json(text)):
                doc = (doc or []) + [text]
                if text in ("}", "]") or len(doc) == 1 and _one_line_json(text):
                    try:
                        result.documents.append(json.loads("\n".join(doc)))
                    except json.JSONDecodeError as e:  # ranks' outputs interleaved: keep the run going, say so
                        result.documents.append({"error": f"unparseable JSON output ({e.msg}); see the log", "lines": len(doc)})
                    doc = None
                continue
            m = STEP_LINE.match(text)
            if m:
                show.step(int(m.group(1)), m.group(2), m.group(3))
                continue
            if not text.strip() or text in shown:
                continue
            if not verbose and NOISE.search(text) and not OURS.match(text):
                result.hidden += 1
                continue
            shown.add(text)
            show.line(text)
    result.rc = proc.wait()
    if doc is not None:  # a document cut short (the command died while printing it): keep it out
        result.documents.append({"error": "incomplete JSON output", "lines": len(doc)})
    return result


def _one_line_json(text: str) -> bool:
    return (text.startswith("{") and text.endswith("}")) or (text.startswith("[") and text.endswith("]"))
