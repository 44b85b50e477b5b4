"""Reading what a training script prints: progress lines and the final summary block.

Progress (one line per report, unknown keys kept, values that are numbers become numbers):

    progress step=12 pct=40.0 loss=5.1234 tok_per_s=12345 remaining_s=36.0

Summary (upstream format; the last block in the output wins):

    ---
    val_bpb: 0.997900
    training_seconds: 300.1
    ...
"""

from __future__ import annotations

import re
from typing import Optional, Union

Value = Union[int, float, str]

SUMMARY_KEYS = (
    "val_bpb",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
    "backend",
    "chip",
)

_SUMMARY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):\s*(.*?)\s*$")
# The last line of a Python traceback ("ValueError: ...", "torch.OutOfMemoryError: ...")
# or an explicit failure message.
_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b.*|.*\b(FAIL|FAILED|Error|ERROR)\b.*)$")


def to_value(text: str) -> Value:
    """'12' -> 12, '5.1' -> 5.1, 'nan' -> nan, anything else stays a string."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_progress(line: str) -> Optional[dict[str, Value]]:
    """The key=value pairs of a progress line, or None if `line` is not one."""
    parts = line.strip().split()
    if not parts or parts[0] != "progress":
        return None
    out: dict[str, Value] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and key:
            out[key] = to_value(value)
    return out


def parse_summary(text: str) -> dict[str, Value]:
    """The `key: value` lines after the last `---` line; {} if there is no block."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    out: dict[str, Value] = {}
    for line in lines[starts[-1] + 1 :]:
        m = _SUMMARY_LINE.match(line.strip())
        if not m:
            if out:
                break  # the block ends at the first line that is not `key: value`
            continue
        out[m.group(1)] = to_value(m.group(2))
    return out


def last_error_line(lines: list[str]) -> Optional[str]:
    """The last line that looks like an error, for a one-line crash reason."""
    for line in reversed(lines):
        s = line.strip()
        if s and _ERROR_LINE.match(s):
            return s
    return None
