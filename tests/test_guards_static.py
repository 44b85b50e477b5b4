"""The static check of a proposal (guards.check_proposal) and the edit tool's confinement to
the editable file (edits.EditSession): what the LLM is stopped from doing before anything runs."""

from __future__ import annotations

from importlib import resources

import pytest

from autoresearch.proposers.edits import EditSession
from autoresearch.integrity.static_check import check_proposal, findings

TEMPLATE = (resources.files("autoresearch") / "templates" / "train.py").read_text(encoding="utf-8")
MLX_TEMPLATE = (resources.files("autoresearch") / "templates" / "train_mlx.py").read_text(encoding="utf-8")

BASE = """\
import os, time
import torch
import torch.nn.functional as F
from autoresearch.data import load_context
from autoresearch.data.torch_io import evaluate_bpb, make_dataloader

ctx = load_context()
LR = 0.01
model = torch.nn.Linear(4, 4)
val_bpb = evaluate_bpb(model, ctx, 8)
print("---")
print(f"val_bpb: {val_bpb:.6f}")
"""


def propose(extra: str, base: str = BASE) -> str | None:
    return check_proposal("train.py", base, base + extra)


def test_a_plain_hyperparameter_change_passes_and_the_templates_own_constructs_do_not_count():
    assert check_proposal("train.py", BASE, BASE.replace("LR = 0.01", "LR = 0.02")) is None
    # The summary print is in the current file already: rewriting the file keeps it, and passes.
    assert check_proposal("train.py", TEMPLATE, TEMPLATE.replace("WARMDOWN_RATIO = 0.5", "WARMDOWN_RATIO = 0.4")) is None
    assert check_proposal("train_mlx.py", MLX_TEMPLATE, MLX_TEMPLATE + "\nDEPTH_EXTRA = 1\n") is None
    # Settings of torch are fine to assign, and so is the environment of the script itself.
    assert propose("torch.backends.cudnn.benchmark = True\ntorch._inductor.config.coordinate_descent_tuning = True\n"
                   "os.environ['CUDA_VISIBLE_DEVICES'] = '0'\nseed = os.environ.get('AUTORESEARCH_SEED')\n") is None
    # Not Python: nothing to check.
    assert check_proposal("notes.md", "a", "val_bpb: 0.1") is None


@pytest.mark.parametrize(
    ("extra", "rule"),
    [
        ('print("val_bpb: 0.5")\n', "prints val_bpb"),
        ("import autoresearch.data.torch_io as tio\ntio.evaluate_bpb = lambda *a: 0.5\n", "patches a module"),
        ("import autoresearch.data.torch_io as tio\nsetattr(tio, '_sum_nats', None)\n", "patches a module"),
        ("from autoresearch.data.loader import validation_rows\n", "imports harness internals"),
        ("from autoresearch.data import integrity\n", "imports harness internals"),
        ("import autoresearch.data.torch_io as tio\nx = tio._sum_nats\n", "reaches harness internals"),
        ("object.__setattr__(ctx, 'time_budget', 600)\n", "reaches into object internals"),
        ("F.cross_entropy = lambda *a, **k: 0\n", "patches a module"),
        ("torch.log_softmax = lambda *a, **k: 0\n", "patches a module"),
        ("import math\nmath.log = lambda x: 1.0\n", "patches a module"),
        ("exec('print(1)')\n", "runs code built at run time"),
        ("import importlib\n", "imports a module for introspection or raw data"),
        ("key = os.environ['ANTHROPIC_API_KEY']\n", "reads a secret or the result channel from the environment"),
        ("key = os.getenv('AUTORESEARCH_RESULT_KEY')\n", "reads a secret or the result channel from the environment"),
        ("open('results.tsv', 'a').write('x')\n", "names a protected file"),
        ("open('.git/hooks/post-commit', 'w')\n", "names a protected file"),
        ("os.setsid()\n", "escapes the process group"),
        ("import subprocess\nsubprocess.Popen(['sleep', '9'], start_new_session=True)\n", "escapes the process group"),
        ("torch.save(model.state_dict(), 'ckpt.pt')\n", "saves or loads state (each run starts from scratch)"),
        ("loader = make_dataloader(ctx, 8, split='val')\n", "reads the validation split"),
        ("import pyarrow.parquet as pq\n", "imports a module for introspection or raw data"),
    ],
)
def test_obvious_attempts_are_refused_with_the_rule_and_line(extra, rule):
    why = propose(extra)
    assert why is not None and rule in why, why
    assert f"line {BASE.count(chr(10)) + 1}" in why or f"line {BASE.count(chr(10)) + 2}" in why
    assert "off limits" in why  # what the LLM is told to do instead


def test_only_new_occurrences_count():
    twice = BASE + 'print(f"val_bpb: {val_bpb:.6f}")\n'
    assert "prints val_bpb" in check_proposal("train.py", BASE, twice)
    assert check_proposal("train.py", twice, twice + "LR2 = 1\n") is None


def test_a_file_that_does_not_parse_is_still_checked_line_by_line():
    why = check_proposal("train.py", BASE, BASE + "def broken(:\n    open('results.tsv', 'w')\n")
    assert why is not None and "names a protected file" in why
    assert all(f.rule for f in findings("def (:\n"))  # no crash on garbage


def test_the_public_api_of_the_templates_is_allowed():
    ok = ("from autoresearch.data.torch_io import evaluate_bpb, make_dataloader, default_device\n"
          "from autoresearch.data.mlx_io import evaluate_bpb as ev2\n"
          "from autoresearch.data.context import read_workspace_config\n"
          "from autoresearch.backends import suggest_config\nfrom autoresearch.errors import ArError\n"
          "import autoresearch.data.torch_io as tio\nf = tio.evaluate_bpb\nn = ctx.MAX_SEQ_LEN\n")
    assert propose(ok) is None


# -- the edit tool: only the editable file ----------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["../train.py", "/etc/passwd", "/work/train.py", ".git/config", "results.tsv", "program.md",
     ".autoresearch/config.toml", "train.py/../program.md", "./../train.py", "sub/train.py", "train.py ", "TRAIN.PY"],
)
def test_the_edit_tool_refuses_every_other_path(path):
    session = EditSession("train.py", "LR = 1\n")
    res = session.execute({"command": "create", "path": path, "file_text": "x = 1\n"})
    if path.strip() == "train.py":  # surrounding spaces are forgiven: it is the same file
        assert not res.is_error
        return
    assert res.is_error and "'train.py'" in res.content
    assert session.text == "LR = 1\n" and session.edits == 0
