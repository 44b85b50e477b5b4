"""The wire format between the judge (in `ar`) and the run (docs/judge.md).

A message is a fixed prefix, a small JSON header and a raw payload:

    b"ARJ1" | header length (uint32, big-endian) | payload length (uint64) | header | payload

The header is a JSON object with a "type". The payload is the raw bytes of one
C-contiguous little-endian numpy array (int32 or float32) whose shape the receiver
already knows from the protocol state; nothing is ever unpickled. The receiver states,
for each message type it accepts now, the exact payload length it expects: a sender
cannot make the judge allocate more than that, and a wrong length is refused before
any payload byte is read. Every read has a deadline, so a silent or slow peer cannot
hang the judge.

Messages, in order (judge = J, run = R):
    R: hello     {"version", "batch_size"}                          no payload
    J: config    {"seq_len", "vocab", "batch_size"}                 no payload
    per batch:
    J: batch     {"index", "rows"}                                  int32 (rows, seq_len) inputs
    R: commit    {"index", "low_precision"}                         float32 (rows, seq_len-1) nats,
                                                                    then float32 (rows, vocab) logits
                                                                    of the last position
    J: challenge {"index", "count"}                                 int32 (count, 2) (row, position)
    R: logits    {"index"}                                          float32 (count, vocab)
    J: done      {"val_bpb"}                                        no payload
Either side may send instead: J: reject {"category", "reason"}; R: abort {"reason"}.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Callable, Mapping, Optional, Union

import numpy as np

VERSION = 1
MAGIC = b"ARJ1"
PREFIX = struct.Struct(">4sIQ")
MAX_HEADER = 4096

HELLO, CONFIG, BATCH, COMMIT, CHALLENGE, LOGITS, DONE, REJECT, ABORT = (
    "hello", "config", "batch", "commit", "challenge", "logits", "done", "reject", "abort")


class ProtocolError(Exception):
    """The peer broke the protocol (malformed, oversized, unexpected, too slow, gone)."""


class Closed(ProtocolError):
    """The peer closed the connection between two messages."""


def send(sock: socket.socket, header: dict, payload: Optional[np.ndarray] = None,
         timeout: Optional[float] = None) -> None:
    """Send one message; ProtocolError if the peer does not take it within `timeout` s."""
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    body = b"" if payload is None else np.ascontiguousarray(payload, dtype=payload.dtype.newbyteorder("<")).data.cast("B")
    try:
        sock.settimeout(timeout)
        sock.sendall(PREFIX.pack(MAGIC, len(head), len(body)) + head)
        if len(body):
            sock.sendall(body)
    except (BrokenPipeError, ConnectionResetError):
        raise Closed("the peer closed the connection") from None
    except OSError as e:  # socket.timeout included
        raise ProtocolError(f"could not send to the peer ({e or 'timed out'})") from None


def _read_exact(sock: socket.socket, n: int, deadline: Optional[float], started: bool) -> memoryview:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProtocolError("timed out waiting for the peer")
            sock.settimeout(left)
        else:
            sock.settimeout(None)
        try:
            k = sock.recv_into(view[got:], n - got)
        except socket.timeout:
            raise ProtocolError("timed out waiting for the peer") from None
        except (ConnectionResetError, BrokenPipeError):  # the run went away (crashed, or killed)
            raise Closed("the peer closed the connection") from None
        except OSError as e:
            raise ProtocolError(f"connection failed ({e})") from None
        if k == 0:
            if not started and got == 0:
                raise Closed("the peer closed the connection")
            raise ProtocolError("the peer closed the connection in the middle of a message")
        got += k
    return view


Expect = Mapping[str, Union[int, Callable[[dict], int]]]


def recv(sock: socket.socket, expect: Expect, timeout: float,
         wait: Optional[float] = -1.0) -> tuple[dict, memoryview]:
    """One message whose type is a key of `expect` and whose payload is exactly
    expect[type] bytes (the run passes a function of the header for the judge's messages,
    whose size the judge states; the judge passes numbers only). The first bytes may take `wait` seconds (None: forever; default:
    `timeout`); the whole message then `timeout` seconds more at most."""
    wait = timeout if wait is not None and wait < 0 else wait
    first = _read_exact(sock, 1, None if wait is None else time.monotonic() + wait, False)
    deadline = time.monotonic() + timeout
    magic, hlen, plen = PREFIX.unpack(bytes(first) + bytes(_read_exact(sock, PREFIX.size - 1, deadline, True)))
    if magic != MAGIC:
        raise ProtocolError("not a judge message (bad magic)")
    if hlen > MAX_HEADER:
        raise ProtocolError(f"header of {hlen} bytes (at most {MAX_HEADER})")
    try:
        header = json.loads(bytes(_read_exact(sock, hlen, deadline, True)).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("the header is not JSON") from None
    kind = header.get("type") if isinstance(header, dict) else None
    if not isinstance(kind, str) or kind not in expect:
        raise ProtocolError(f"unexpected message {str(kind)[:40]!r} (expected {' or '.join(expect)})")
    want = expect[kind]
    if callable(want):
        try:
            want = int(want(header))
        except (KeyError, TypeError, ValueError):
            raise ProtocolError(f"{kind} has a malformed header") from None
    if plen != want:
        raise ProtocolError(f"{kind} carries {plen} payload bytes, expected {want}")
    return header, _read_exact(sock, plen, deadline, True) if plen else memoryview(b"")


def array(payload: memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """A payload as a read-only array of `shape` (its length was checked by recv)."""
    return np.frombuffer(payload, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def nbytes(dtype: str, *shape: int) -> int:
    return int(np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64)))
