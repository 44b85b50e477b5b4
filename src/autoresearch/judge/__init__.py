"""The judge: val_bpb computed outside the run's process (and sandbox), see docs/judge.md.

`ar` side: referee.Judge. Run side: client.evaluate, called by evaluate_bpb when the run
was started with a judge (AUTORESEARCH_JUDGE_FD). Wire format: protocol.
"""

from .protocol import FD_ENV
from .referee import Judge, JudgeResult

__all__ = ["FD_ENV", "Judge", "JudgeResult"]
