"""Run the editable training script once, the way the loop does.

`run_script` is the core: `sys.executable <script>` in its own process group (so the
whole tree can be stopped at once), output teed to a log file and parsed for progress
lines, a hard wall-clock kill, and the summary block read into a `RunResult`.
`experiment/once.py` (`ar run`) and the loops run it through `script_runner.ScriptRunner`.

Stopping: on the hard kill, Ctrl-C (SIGINT), SIGTERM or SIGHUP the process group gets
SIGTERM, `grace` seconds, then SIGKILL. After a normal exit the group is swept the same
way, so no worker outlives its run. Processes that left the group (setsid, a daemon)
are found by containment.ProcessTracker and killed.

Containment (every run): the environment is allow-listed (no API keys), the log is
capped at `max_log_bytes` (then the group is killed), and a run that leaves a process
behind that ignored SIGTERM, or one that had left the group, is "rejected". With a
`policy` (trust.TrustPolicy), val_bpb is taken only from ar's judge (judge/referee.py) and
checked against the printout, the workspace's constants and the budget (trust.judge).
A rejected run has status "rejected", `rejection` (a short category for results.tsv)
and `reason`; the reason is also the last line of its log, so the next proposal sees it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import os
import re
import secrets
import selectors
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from autoresearch.errors import ArError
from autoresearch.integrity.containment import RUN_ID_ENV, ProcessTracker, clean_env, describe
from autoresearch.run.summary import last_error_line, parse_progress, parse_summary

ProgressCallback = Callable[[dict], None]


class StopRun(Exception):
    """Raised by an `on_progress` callback: stop the run now; its status is "stopped" and
    the exception's text its reason (experiment/early_stop.py stops doomed runs this way)."""

TAIL_LINES = 50
DEFAULT_GRACE = 5.0
_SUMMARY_BYTES = 256 * 1024  # the summary block is looked for in this much of the log's end
_DRAIN_SECONDS = 2.0  # after the group is gone, how long to wait for the pipe to close
SANDBOX_TEARDOWN = 5.0  # seconds a sandbox's namespace may take to disappear after its init exits
MAX_LOG_BYTES = 50 * 1024 * 1024  # a run's output beyond this stops the run: a print loop cannot fill the disk


@dataclass
class RunResult:
    status: str  # ok | crash | timeout | interrupted | rejected | stopped (early, by a progress callback)
    val_bpb: Optional[float]
    memory_gb: float  # peak_vram_mb / 1024; 0.0 when unknown
    seconds: float  # wall clock measured by the runner, start-up included
    summary: dict
    reason: str  # why it is not ok ("" when ok)
    log_path: Path
    log_tail: list[str] = field(default_factory=list)  # the last 50 lines of output
    returncode: Optional[int] = None
    rejection: str = ""  # status "rejected": the short category ("non-causal", "over budget", ...)
    harness: Optional[dict] = None  # what ar's judge measured (val_bpb, clocks, checks), when it evaluated
    machine: Optional[float] = None  # share of the machine other work used during the run (run/probe.py)
    sandbox: str = ""  # the OS sandbox it ran in: bubblewrap, seatbelt, none ("" unknown)
    advice: str = ""  # what the static check flagged in the edit (it ran anyway)


def rejection_note(category: str) -> str:
    """A rejected run's note; its results.tsv description shows it as "(rejected: <category>)"."""
    return f"rejected: {category}"


def _append_log(path: Path, line: str) -> None:
    with contextlib.suppress(OSError), open(path, "ab") as f:
        f.write(("\n" + line + "\n").encode("utf-8"))


def advise(result: RunResult, line: str) -> None:
    """A note for the model at the end of the run's log (and of its tail, which the next proposal sees)."""
    _append_log(result.log_path, line)
    result.log_tail = [*result.log_tail, line][-TAIL_LINES:]


def reject(result: RunResult, category: str, why: str) -> RunResult:
    """`result` turned into a rejection; the reason goes to the end of its log and tail."""
    out = dataclasses.replace(result, status="rejected", val_bpb=None, memory_gb=0.0,
                              reason=f"rejected ({category}): {why}", rejection=category)
    advise(out, f"[ar] rejected ({category}): {why}")
    return out


class _Stopped(Exception):
    """SIGTERM or SIGHUP arrived while a run was in progress."""


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into an exception (main thread only), like SIGINT already is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Stopped(signal.Signals(signum).name)

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    previous = {n: signal.signal(getattr(signal, n), handler) for n in names}
    try:
        yield
    finally:
        for n, old in previous.items():
            signal.signal(getattr(signal, n), old)


class _OutputReader(threading.Thread):
    """Copy the script's output to the log, keep the tail, report progress lines."""

    def __init__(self, pipe, log, on_progress: Optional[ProgressCallback], max_bytes: int = MAX_LOG_BYTES,
                 on_overflow: Optional[Callable[[], None]] = None):
        super().__init__(daemon=True)
        self.pipe, self.log, self.on_progress = pipe, log, on_progress
        self.max_bytes, self.on_overflow = max_bytes, on_overflow
        self.written = 0
        self.overflow = False  # the cap was reached: the rest was read and thrown away
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.callback_error: Optional[BaseException] = None
        self.stopped = threading.Event()  # the callback raised StopRun
        self.stop_reason = ""
        self._drain_until: Optional[float] = None
        self._pending = b""

    def finish(self) -> None:
        """The process group is gone: read what is left, but do not wait for ever."""
        self._drain_until = time.monotonic() + _DRAIN_SECONDS
        self.join()

    def run(self) -> None:
        fd = self.pipe.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                if self._drain_until is not None and time.monotonic() > self._drain_until:
                    break  # a child outside the group still holds the pipe
                if not sel.select(timeout=0.1):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                if self.overflow:
                    continue  # keep draining so the writer is not blocked until it is killed
                if self.written + len(chunk) > self.max_bytes:
                    chunk = chunk[: max(0, self.max_bytes - self.written)]
                    self.overflow = True
                    if self.on_overflow is not None:
                        self.on_overflow()
                self.written += len(chunk)
                self.log.write(chunk)
                self.log.flush()
                self._lines(chunk)
        if self._pending:
            self._line(self._pending)

    def _lines(self, chunk: bytes) -> None:
        # \r too: progress bars redraw a line with carriage returns.
        parts = re.split(rb"[\r\n]", self._pending + chunk)
        self._pending = parts.pop()
        for part in parts:
            self._line(part)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace")
        if not line.strip():
            return
        self.tail.append(line)
        if self.on_progress is None or self.callback_error is not None:
            return
        fields = parse_progress(line)
        if fields is not None:
            try:
                self.on_progress(fields)
            except StopRun as e:
                self.stop_reason = str(e) or "stopped early"
                self.callback_error = e  # no more callbacks
                self.stopped.set()
            except Exception as e:  # a broken display must not block the pipe
                self.callback_error = e


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, or its zombie keeps the group "alive"
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen, grace: float = DEFAULT_GRACE, reap: Optional[Callable[[], None]] = None) -> bool:
    """SIGTERM the process group of `proc`, wait up to `grace` seconds, then SIGKILL it.
    True when SIGKILL was needed (something ignored SIGTERM). `reap` collects exited
    processes that became ours (containment's subreaper), which would count as alive."""
    killed = False
    if _group_alive(proc):
        _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if reap is not None:
                reap()
            if not _group_alive(proc):
                break
            time.sleep(0.02)
        if reap is not None:
            reap()
        if _group_alive(proc):
            _signal_group(proc, signal.SIGKILL)
            killed = True
    proc.wait()
    return killed


def run_script(
    script: Path,
    *,
    cwd: Path,
    log_path: Path,
    env: Optional[dict] = None,
    kill_after: float = 600.0,
    grace: float = DEFAULT_GRACE,
    on_progress: Optional[ProgressCallback] = None,
    python: str = sys.executable,
    stop: Optional[threading.Event] = None,
    policy=None,
    max_log_bytes: int = MAX_LOG_BYTES,
    sandbox=None,
    mounts=None,
) -> RunResult:
    """Run `python script` in `cwd` until it exits or `kill_after` seconds pass.

    Output (stdout and stderr) is appended to `log_path`, at most `max_log_bytes` of it.
    `env` is added to the allow-listed part of the current environment
    (containment.clean_env). With `policy` (a trust.TrustPolicy) val_bpb comes from the
    judge (a thread here, judge/referee.py) and is checked (trust.judge). Ctrl-C, SIGTERM and SIGHUP
    stop the run and return status "interrupted"; the caller decides what to do next.
    So does setting `stop` (runs in worker threads, where signals do not arrive).
    With `sandbox` (autoresearch.sandbox) the script runs inside it and sees only `mounts`
    (sandbox.Mounts); `result.sandbox` names it.
    """
    full_env = clean_env(os.environ, env)
    full_env["PYTHONUNBUFFERED"] = "1"  # progress lines arrive while they happen
    run_id = secrets.token_hex(8)
    full_env[RUN_ID_ENV] = run_id  # marks the run's processes, wherever they go
    referee = None
    if policy is not None:  # val_bpb from the judge, a thread of this process (judge/referee.py)
        referee = policy.judge()
        full_env.update(referee.env())
    log_path.parent.mkdir(parents=True, exist_ok=True)
    status: Optional[str] = None
    start = time.monotonic()
    with open(log_path, "ab") as log:  # append: a log is never overwritten
        offset = log.seek(0, os.SEEK_END)  # where this run's output starts
        argv = [python, str(script)]
        if sandbox is not None:
            argv = sandbox.command(argv, cwd=cwd, mounts=mounts)
        try:
            proc = subprocess.Popen(
                argv,
                cwd=str(cwd),
                env=full_env,
                pass_fds=referee.pass_fds if referee is not None else (),  # the run's end of the judge's socket
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the whole tree can be stopped
            )
        except OSError as e:
            if referee is not None:
                referee.close()
            raise ArError(f"cannot start {python} {script}: {e}") from None
        if referee is not None:
            referee.start(start)
        reader = _OutputReader(proc.stdout, log, on_progress, max_log_bytes, lambda: _signal_group(proc, signal.SIGKILL))
        tracker = ProcessTracker(proc.pid, run_id)
        try:  # from here a Ctrl-C (to the whole terminal group) is an interrupted run, never lost
            tracker.start()
            reader.start()
            with _stop_signals():
                status = _wait(proc, kill_after, stop, reader.stopped)
        except (KeyboardInterrupt, _Stopped):
            status = "interrupted"
        finally:
            # Always, even after a normal exit: sweep up workers the script left behind.
            # A second Ctrl-C while stopping kills the group at once; the sweep completes.
            with _second_sigint_kills(proc):
                # In a sandbox the kernel ends every process of its PID namespace once bwrap
                # exits: what is left is being torn down, not ignoring SIGTERM (on a busy
                # machine that takes longer than a short grace), so give it time, blame nothing.
                stubborn = stop_group(proc, grace if sandbox is None else max(grace, SANDBOX_TEARDOWN),
                                      reap=tracker.reap) and sandbox is None
                strays = tracker.kill_strays()  # those that had left the group
                tracker.close()
                if reader.is_alive():
                    reader.finish()
                proc.stdout.close()
    seconds = time.monotonic() - start
    result = _result(status, proc.returncode, seconds, log_path, offset, list(reader.tail), kill_after,
                     reader.stop_reason)
    result.sandbox = sandbox.name if sandbox is not None else "none"
    verdict = referee.close() if referee is not None else None  # the run's processes are gone: so is its end
    return _contain(result, overflow=reader.overflow, max_log_bytes=max_log_bytes, strays=strays,
                    stubborn=stubborn and status is None, verdict=verdict, policy=policy)


def _contain(result: RunResult, *, overflow: bool, max_log_bytes: int, strays: list, stubborn: bool,
             verdict, policy) -> RunResult:
    """The run's containment checks, then (with a policy) the harness's verdict."""
    if result.status == "interrupted":
        return result
    if overflow:
        return reject(result, "log too large", f"the output passed {max_log_bytes / 2**20:g} MB, so the run was "
                                               "stopped; print less (progress lines at most a few per second)")
    if strays:
        return reject(result, "escaped process", f"{describe(strays)} left the run's process group (setsid, a "
                                                 "daemon) and had to be killed; start no process that outlives the run")
    if stubborn:
        return reject(result, "process ignored SIGTERM", "a process of the run was still there after it ended and "
                                                         "ignored SIGTERM; it had to be killed")
    if verdict is None or result.status == "stopped":  # stopped while training: nothing to judge
        return result
    from autoresearch.integrity.trust import judge

    verdict = judge(result.summary, result.status, result.returncode, verdict, policy)
    result.harness = verdict.record
    if verdict.rejection is not None:
        return reject(result, *verdict.rejection)
    if verdict.record is None or result.status not in ("ok", "crash"):
        return result  # no harness result: a crash (or timeout) as it was
    value = verdict.val_bpb
    if value is None:
        return result  # it evaluated, then failed: a crash
    if not (math.isfinite(value) and value > 0):
        result.status, result.val_bpb, result.reason = "crash", None, f"val_bpb is {value} (the loss diverged?)"
        return result
    result.status, result.val_bpb, result.reason = "ok", value, ""
    return result


def _wait(proc: subprocess.Popen, kill_after: float, stop: Optional[threading.Event],
          early: threading.Event) -> Optional[str]:
    """None when the script exits, "timeout" at the hard kill, "interrupted" once `stop` is
    set, "stopped" once `early` is (a progress callback raised StopRun). Polled every 0.1 s."""
    deadline = time.monotonic() + kill_after
    while True:
        left = deadline - time.monotonic()
        try:
            proc.wait(timeout=max(0.0, min(0.1, left)))
            return None
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            return "timeout"
        if stop is not None and stop.is_set():
            return "interrupted"
        if early.is_set():
            return "stopped"


@contextlib.contextmanager
def _second_sigint_kills(proc: subprocess.Popen) -> Iterator[None]:
    """While the group is being stopped, another Ctrl-C SIGKILLs it at once (no grace)
    instead of interrupting the sweep, so "Ctrl-C twice" stops at once and cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, lambda *_: _signal_group(proc, signal.SIGKILL))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _read_tail(path: Path, start: int, size: int) -> str:
    """The end of a log after `start`: the summary is printed last, and a runaway log can be huge."""
    with open(path, "rb") as f:
        f.seek(max(start, os.fstat(f.fileno()).st_size - size))
        return f.read().decode("utf-8", "replace")


def _number(value) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) else None


def _result(status, returncode, seconds, log_path, offset, tail, kill_after, stop_reason: str = "") -> RunResult:
    summary = parse_summary(_read_tail(log_path, offset, _SUMMARY_BYTES))
    val_bpb = _number(summary.get("val_bpb"))
    vram = _number(summary.get("peak_vram_mb"))
    memory_gb = vram / 1024 if vram is not None and math.isfinite(vram) else 0.0
    if status == "timeout":
        reason = f"killed after {kill_after:g} s (the hard limit); the whole process group was stopped"
    elif status == "interrupted":
        reason = "interrupted by the user (Ctrl-C or a stop signal)"
    elif status == "stopped":
        reason = stop_reason
    elif val_bpb is not None and math.isfinite(val_bpb) and val_bpb > 0:
        status, reason = "ok", ""
    else:
        status = "crash"
        if "val_bpb" in summary:
            reason = f"val_bpb is {summary['val_bpb']} (the loss diverged?)"
        else:
            err = last_error_line(tail)
            last = next((line.strip() for line in reversed(tail) if line.strip()), "")
            how = f"exit code {returncode}" if returncode and returncode > 0 else (
                f"killed by signal {-returncode}" if returncode and returncode < 0 else "exit code 0"
            )
            reason = f"{err or last or 'no output'} ({how}, no val_bpb)"
    return RunResult(
        status=status,
        val_bpb=val_bpb if val_bpb is not None and math.isfinite(val_bpb) else None,
        memory_gb=memory_gb,
        seconds=seconds,
        summary=summary,
        reason=reason,
        log_path=log_path,
        log_tail=tail,
        returncode=returncode,
    )


# -- one experiment in a workspace ------------------------------------------------


def allocate_log(runs_dir: Path, commit: str) -> tuple[int, Path]:
    """Create the next `<n>-<commit7>.log` (never an existing one) and return it."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name.split("-", 1)[0]) for p in runs_dir.glob("*-*.log") if p.name.split("-", 1)[0].isdigit()]
    n = max(numbers, default=0) + 1
    while True:
        path = runs_dir / f"{n:04d}-{commit[:7]}.log"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return n, path
        except FileExistsError:
            n += 1
