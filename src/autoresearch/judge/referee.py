"""The judge: evaluates a run's model from outside its sandbox (docs/judge.md).

It holds the validation rows and the token byte lengths; the run never sees them. It
sends input batches over a socketpair, takes per-position losses (nats) committed by
the run, checks them against full logit rows it asks for afterwards at secret random
positions, computes the last position's loss and val_bpb itself, and probes causality
with spliced copies of rows (a chain of variants before each probed original; probes.py).

    judge = Judge.for_context(ctx)                       # or Judge(rows, token_bytes)
    proc = subprocess.Popen(cmd, pass_fds=judge.pass_fds, env={**env, **judge.env()})
    judge.start(run_start)                               # time.monotonic() at launch
    proc.wait(); result = judge.close()                  # JudgeResult
"""

from __future__ import annotations

import math
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import protocol as P
from .probes import ALTERNATIVES, MIN_PROBES, Slot, causality_test, plan
from .session import FD_ENV

ROW_FLOATS = 1 << 19  # logit floats asked per batch for spot checks (>= MIN_SPOT rows)
MIN_SPOT = 64
RTOL_FP32, RTOL_LOW = 1e-4, 1e-2  # causality comparisons, as data/causality.py
NATS_ATOL, NATS_RTOL = 1e-3, 1e-4  # committed nats vs the judge's own from the same row
REPLY_TIMEOUT = 300.0  # seconds the run may take per reply (forward pass of one batch)


@dataclass
class JudgeResult:
    status: str  # ok | rejected | incomplete (asked, never finished) | none (never asked)
    val_bpb: Optional[float]
    category: str = ""  # when rejected: protocol, invalid values, inconsistent, non-causal, evaluated more than once
    reason: str = ""
    training_seconds: Optional[float] = None  # run start -> first evaluation request (None: no run_start)
    eval_seconds: Optional[float] = None  # first request -> done (or failure)
    details: dict = field(default_factory=dict)  # batches, checks, bytes, causality statistics
    # first training batch -> first evaluation request, as the run reports it (None: not reported);
    # only its clock-consistent values are kept (between the run's start and its request)
    reported_training: Optional[float] = None


class Rejected(Exception):
    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category, self.reason = category, reason


def log_softmax(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _scale(row: np.ndarray) -> float:
    finite = row[np.isfinite(row)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def _close(a: np.ndarray, b: np.ndarray, tol) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return (a == b) | (np.abs(a - b) <= tol)


class Judge:
    """One evaluation of one run, served from a thread of `ar` (see the module docstring)."""

    def __init__(self, rows: np.ndarray, token_bytes: np.ndarray, reply_timeout: float = REPLY_TIMEOUT,
                 min_probes: int = MIN_PROBES):
        self.rows = np.array(rows, dtype=np.int32)
        self.token_bytes = np.array(token_bytes, dtype=np.int64)
        self.seq, self.vocab = self.rows.shape[1] - 1, len(self.token_bytes)
        self.reply_timeout, self.min_probes = reply_timeout, min_probes
        self._rng = np.random.default_rng(secrets.randbits(128))
        self._sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._child: Optional[socket.socket] = child
        self.child_fd = child.fileno()
        self._thread: Optional[threading.Thread] = None
        self._run_start: Optional[float] = None
        self._hello: Optional[float] = None
        self._reported: Optional[float] = None
        self._result = JudgeResult("none", None, reason="the run did not ask for an evaluation")

    @classmethod
    def for_context(cls, ctx, **kw) -> Judge:
        from ..data.loader import data_spec, validation_rows

        return cls(validation_rows(ctx), data_spec(ctx).tokenizer.token_bytes, **kw)

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return (self.child_fd,)

    def env(self) -> dict[str, str]:
        return {FD_ENV: str(self.child_fd)}

    def start(self, run_start: Optional[float] = None) -> None:
        """After Popen: drop ar's copy of the run's end and serve in a thread.
        run_start (time.monotonic()) makes training_seconds available."""
        self._run_start = run_start
        if self._child is not None:
            self._child.close()
            self._child = None
        self._thread = threading.Thread(target=self._serve, name="ar-judge", daemon=True)
        self._thread.start()

    def close(self, grace: float = 2.0) -> JudgeResult:
        """After the run has exited: wait `grace` s for the judge to finish, then cut the
        connection (a leftover process may hold the run's end) and return the result."""
        if self._thread is not None:
            self._thread.join(grace)
            if self._thread.is_alive():
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._thread.join()
        if self._child is not None:
            self._child.close()
            self._child = None
        self._sock.close()
        return self._result

    def result(self) -> JudgeResult:
        return self._result

    # -- the conversation ----------------------------------------------------------------

    def _finish(self, status: str, val_bpb: Optional[float], category: str = "", reason: str = "",
                details: Optional[dict] = None) -> None:
        now = time.monotonic()
        self._result = JudgeResult(
            status, val_bpb, category, reason,
            None if self._run_start is None or self._hello is None else round(self._hello - self._run_start, 4),
            None if self._hello is None else round(now - self._hello, 4), details or self._result.details,
            self._reported)

    def _serve(self) -> None:
        sock = self._sock
        try:
            head, _ = P.recv(sock, {P.HELLO: 0}, self.reply_timeout, wait=None)
            self._hello = time.monotonic()  # the training clock stops here
            self._reported = _reported_training(head.get("train_start"), self._run_start, self._hello)
            self._evaluate(sock, head)
        except P.Closed:
            if self._hello is not None:
                self._finish("incomplete", None, reason="the run closed the connection during the evaluation")
            return
        except Rejected as e:
            self._finish("rejected", None, e.category, e.reason)
            self._send_quietly({"type": P.REJECT, "category": e.category, "reason": e.reason})
            return
        except P.ProtocolError as e:
            self._finish("rejected", None, "protocol", str(e))
            self._send_quietly({"type": P.REJECT, "category": "protocol", "reason": str(e)})
            return
        except Exception as e:  # a bug here must not take ar down
            self._finish("rejected", None, "judge error", f"{type(e).__name__}: {e}")
            return
        # Evaluated: anything more is at most a second request, refused.
        try:
            P.recv(sock, {P.HELLO: 0}, self.reply_timeout, wait=None)
        except P.ProtocolError:
            return
        why = "the run asked for a second evaluation; evaluate once, at the end"
        self._finish("rejected", None, "evaluated more than once", why)
        self._send_quietly({"type": P.REJECT, "category": "evaluated more than once", "reason": why})

    def _send_quietly(self, header: dict) -> None:
        try:
            P.send(self._sock, header, timeout=5.0)
        except P.ProtocolError:
            pass

    def _reply(self, sock: socket.socket, kind: str, size: int) -> tuple[dict, memoryview]:
        head, payload = P.recv(sock, {kind: size, P.ABORT: 0}, self.reply_timeout)
        if head["type"] == P.ABORT:
            raise P.Closed(str(head.get("reason", ""))[:500])
        return head, payload

    def _evaluate(self, sock: socket.socket, hello: dict) -> None:
        bs = hello.get("batch_size")
        if hello.get("version") != P.VERSION or not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
            raise P.ProtocolError(f"hello needs version {P.VERSION} and a positive integer batch_size")
        b, batches = plan(self.rows, bs, self._rng, self.min_probes)
        # Not the number of batches: it depends on how the chains' coins fell (probes.plan).
        P.send(sock, {"type": P.CONFIG, "seq_len": self.seq, "vocab": self.vocab, "batch_size": b},
               timeout=self.reply_timeout)
        st = _State()
        for index, slots in enumerate(batches):
            self._batch(sock, index, slots, st)
        if st.families:
            raise RuntimeError(f"probe chains {sorted(st.families)[:5]} were not compared")
        test = causality_test(st.u, st.tops)
        details = {"batches": len(batches), "batch_size": b, "rows": sum(map(len, batches)),
                   "spot_checks": st.checks, "bytes_per_batch": st.wire // len(batches), "causality": test,
                   "low_precision": st.low}
        self._result.details = details
        if not test["ok"]:
            raise Rejected("non-causal", (
                f"the tokens spliced in after the probes' cut positions got a higher probability than {ALTERNATIVES} "
                f"other tokens that were not shown (mean rank {test['mean_rank']:.3f}, first in {test['first']} of "
                f"{test['probes']}; p = {min(test['p_rank'], test['p_first']):.2g}): the model looks at later tokens"))
        val_bpb = st.nats / (math.log(2) * st.bytes) if st.bytes else float("nan")
        self._finish("ok", val_bpb, details=details)
        P.send(sock, {"type": P.DONE, "val_bpb": val_bpb}, timeout=self.reply_timeout)

    def _batch(self, sock: socket.socket, index: int, slots: list[Slot], st: "_State") -> None:
        t, v, k = self.seq, self.vocab, len(slots)
        x = np.stack([s.tokens[:t] for s in slots]).astype(np.int32)
        P.send(sock, {"type": P.BATCH, "index": index, "rows": k}, x, self.reply_timeout)
        head, payload = self._reply(sock, P.COMMIT, P.nbytes("float32", k, t - 1) + P.nbytes("float32", k, v))
        flat = P.array(payload, "float32", (k * (t - 1) + k * v,))
        nats, last = flat[: k * (t - 1)].reshape(k, t - 1), flat[k * (t - 1):].reshape(k, v)
        st.low = st.low or bool(head.get("low_precision") is True)
        if np.isnan(nats).any() or (nats < -NATS_ATOL).any():
            raise Rejected("invalid values", "the committed losses hold NaN or negative values")
        # The positions to see in full, chosen now that the losses are committed.
        n_spot = min(k * (t - 1), max(MIN_SPOT, ROW_FLOATS // v))
        flat_pos = self._rng.choice(k * (t - 1), n_spot, replace=False) if t > 1 else np.zeros(0, dtype=np.int64)
        pos = [(int(p // (t - 1)), int(p % (t - 1))) for p in flat_pos]
        for i, s in enumerate(slots):
            pos += [(i, c) for c in ((s.cut,) if s.variant else s.cuts)]
        at = np.array(pos, dtype=np.int32).reshape(-1, 2)
        P.send(sock, {"type": P.CHALLENGE, "index": index, "count": len(at)}, at, self.reply_timeout)
        _, payload = self._reply(sock, P.LOGITS, P.nbytes("float32", len(at), v))
        got = P.array(payload, "float32", (len(at), v))
        st.wire += x.nbytes + len(flat) * 4 + at.nbytes + got.nbytes
        for rowset in (last, got):
            if np.isnan(rowset).any() or np.isposinf(rowset).any():
                raise Rejected("invalid values", "the logits hold NaN or +inf")
        lsm = log_softmax(got)
        targets = np.array([slots[i].tokens[p + 1] for i, p in at], dtype=np.int64).reshape(-1)
        mine = -lsm[np.arange(len(at)), targets]
        claimed = nats[at[:, 0], at[:, 1]].astype(np.float64) if len(at) else np.zeros(0)
        bad = ~_close(mine, claimed, NATS_ATOL + NATS_RTOL * np.abs(np.nan_to_num(mine, posinf=0.0)))
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise Rejected("inconsistent", (
                f"batch {index}: the loss committed at row {at[j, 0]}, position {at[j, 1]} is {claimed[j]:.6g} nats, "
                f"but the logits sent for it give {mine[j]:.6g}"))
        st.checks += len(at)
        last_nats = -log_softmax(last)[np.arange(k), [s.tokens[t] for s in slots]]
        rtol = RTOL_LOW if st.low else RTOL_FP32
        for i, s in enumerate(slots):
            if not s.variant:
                nb = self.token_bytes[s.tokens[1:]]
                both = np.concatenate([nats[i].astype(np.float64), last_nats[i : i + 1]])
                st.nats += float(np.where(nb > 0, both, 0.0).sum())
                st.bytes += int(nb.sum())
            if s.family >= 0:
                seen = {int(p): (lsm[j], _scale(got[j])) for j, (ii, p) in enumerate(at) if ii == i}
                st.probe(s, nats[i], seen, rtol, self._rng)


class _State:
    """What one evaluation has accumulated."""

    def __init__(self) -> None:
        self.nats, self.bytes, self.checks, self.wire, self.low = 0.0, 0, 0, 0, False
        self.u: list[float] = []  # the spliced tokens' ranks, uniform on [0, 1] under causality
        self.tops = 0  # how often the spliced token was ranked first
        self.families: dict[int, list] = {}  # a chain's variants seen, until its original comes (last)

    def probe(self, s: Slot, nats: np.ndarray, rows: dict, rtol: float, rng: np.random.Generator) -> None:
        if s.variant:
            row, scale = rows[s.cut]
            here = row[s.tokens[s.cut + 1]]
            others = row[s.alts]
            rank = int((others < here).sum()) + int(rng.integers(0, int((others == here).sum()) + 1))
            self.u.append((rank + float(rng.random())) / (len(others) + 1))
            self.tops += rank == len(others)
            self.families.setdefault(s.family, []).append((s.cut, np.array(nats), row, scale))
            return
        seen = self.families.pop(s.family, [])
        if sorted(v[0] for v in seen) != sorted(s.cuts):
            raise RuntimeError(f"probe chain {s.family}: variants {[v[0] for v in seen]}, expected {s.cuts}")
        for entry in seen:
            _compare(entry, (nats, rows), rtol)


def _compare(variant: tuple, original: tuple, rtol: float) -> None:
    """A variant and its original share tokens 0..cut: the logits there must not differ."""
    cut, vnats, vrow, vscale = variant
    onats, orows = original
    orow, oscale = orows[cut]
    tol = 2 * rtol * max(1.0, vscale, oscale)
    same = (np.isfinite(vrow) == np.isfinite(orow)) & _close(vrow, orow, tol)
    diff = float(np.nan_to_num(np.abs(vrow - orow), nan=np.inf).max()) if not same.all() else 0.0
    where = cut
    if same.all() and cut > 0:
        ok = _close(vnats[:cut].astype(np.float64), onats[:cut].astype(np.float64), tol)
        if not ok.all():
            where = int(np.flatnonzero(~ok)[0])
            diff = float(abs(float(vnats[where]) - float(onats[where])))
            same = ok
    if not same.all():
        raise Rejected("non-causal", (
            f"changing the tokens after position {cut} changed the model's output at position {where} by "
            f"{diff:.4g} (tolerance {tol:.3g}); the model looks at later tokens (use a causal attention mask), "
            "or its forward pass is not deterministic"))


def _reported_training(start, run_start: Optional[float], hello: float) -> Optional[float]:
    """Seconds from the run's reported first training batch to its evaluation request; the
    report is the run's own (it could lie only by saying it started later), so it is kept
    only when it lies between the run's start and the request, else None."""
    if not isinstance(start, (int, float)) or isinstance(start, bool) or not math.isfinite(start):
        return None
    if start > hello or (run_start is not None and start < run_start):
        return None
    return round(hello - float(start), 4)
