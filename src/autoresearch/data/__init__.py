"""The fixed harness: constants (profiles), data preparation, tokenizer, dataloader
and evaluate_bpb. Never editable by the research agent.

Training scripts use it like this:

    from autoresearch.data import load_context
    ctx = load_context()            # MAX_SEQ_LEN, TIME_BUDGET, EVAL_TOKENS, VOCAB_SIZE
    from autoresearch.data.torch_io import make_dataloader, evaluate_bpb
"""

# First: takes the judge's socket out of os.environ before anything else can read it.
from ..judge import session as _judge_session  # noqa: F401  (isort: skip)
from .context import RunContext, load_context
from .profiles import PROFILES, Profile, get_profile

__all__ = ["PROFILES", "Profile", "RunContext", "get_profile", "load_context"]
