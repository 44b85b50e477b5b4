"""The judge: val_bpb computed outside the run's process (and sandbox), see docs/judge.md.

`ar` side: referee.Judge. Run side: client.evaluate, called by evaluate_bpb when the run
was started with a judge (AUTORESEARCH_JUDGE_FD). Wire format: protocol.
"""

from .session import FD_ENV

__all__ = ["FD_ENV", "Judge", "JudgeResult"]


def __getattr__(name: str):
    # Lazily: the run's harness imports this package too, and needs none of the referee.
    if name in ("Judge", "JudgeResult"):
        from . import referee

        return getattr(referee, name)
    raise AttributeError(name)
