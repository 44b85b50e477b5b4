"""Evaluation time through the judge vs in-process evaluate_bpb (docs/judge.md).

    python benchmarks/judge.py                     # tiny profile, median of 5, ratio (target <= 1.5x)
    python benchmarks/judge.py --shape datacenter  # T 2048, vocab 8192: per-batch time and bytes on the wire
                               [--batches 8] [--batch-size 32] [--device cuda]

Tiny: a prepared cache with the tiny profile's constants is built from the built-in corpus
in a temporary folder (as tests/conftest.py does); the model is the template's size
(2 blocks, width 128, batch 16). The judged run is a real subprocess with the judge's
socket, as `ar` will start it; its time is the judge's eval_seconds (first request to done).
Datacenter: random rows and a random model of the datacenter vocabulary and length
(rows are synthetic; the protocol does not care), a subset of the 10,240 rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from autoresearch.judge import Judge


class GPT(torch.nn.Module):
    def __init__(self, vocab: int, seq: int, depth: int = 2, width: int = 128, heads: int = 2, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.heads = heads
        self.emb = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(torch.nn.ModuleDict({
            "qkv": torch.nn.Linear(width, 3 * width, bias=False), "proj": torch.nn.Linear(width, width, bias=False),
            "fc": torch.nn.Linear(width, 4 * width, bias=False), "out": torch.nn.Linear(4 * width, width, bias=False),
        }) for _ in range(depth))
        self.head = torch.nn.Linear(width, vocab, bias=False)

    def forward(self, x):
        h = self.emb(x)
        b, t, c = h.shape
        for blk in self.blocks:
            q, k, v = blk["qkv"](F.rms_norm(h, (c,))).view(b, t, 3, self.heads, c // self.heads).unbind(2)
            y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
            h = h + blk["proj"](y.transpose(1, 2).reshape(b, t, c))
            h = h + blk["out"](F.relu(blk["fc"](F.rms_norm(h, (c,)))).square())
        return self.head(F.rms_norm(h, (c,)))


def tiny_context(root: Path):
    """A cache with the tiny profile's constants, built from the built-in corpus."""
    import gzip
    from importlib import resources

    import pyarrow as pa
    import pyarrow.parquet as pq

    from autoresearch.data.cache import data_dir, shard_name, tokenizer_dir
    from autoresearch.data.context import RunContext
    from autoresearch.data.profiles import get_profile
    from autoresearch.data.tokenizer import train_tokenizer

    profile = get_profile("tiny")
    corpus = resources.files("autoresearch.data") / "builtin" / "web_bible.jsonl.gz"
    with gzip.open(corpus.open("rb"), "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    val, train = texts[::10], [t for i, t in enumerate(texts) if i % 10]
    ddir = data_dir("benchbible", root)
    ddir.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate((train, val)):
        pq.write_table(pa.table({"text": chunk}), ddir / shard_name(i), row_group_size=100)
    (ddir / ".complete").write_text("{}")
    train_tokenizer(train, profile.vocab_size, tokenizer_dir("benchbible", profile.vocab_size, root))
    return RunContext(profile=profile, source="benchbible", time_budget=60.0, cache=root)


CHILD = """
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from judge import GPT
from autoresearch.data.torch_io import evaluate_bpb
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
model = GPT(cfg["vocab"], cfg["seq"], **cfg["model"]).to(cfg["device"])
with torch.no_grad():  # warm, as after training: the first forward of a process pays one-time costs
    model(torch.zeros((cfg["batch_size"], cfg["seq"]), dtype=torch.long, device=cfg["device"]))
print(json.dumps({"val_bpb": evaluate_bpb(model, None, cfg["batch_size"], device=cfg["device"])}))
"""


def judged(rows, token_bytes, cfg: dict) -> tuple[float, dict]:
    judge = Judge(rows, token_bytes)
    env = {**os.environ, **judge.env()}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg), str(Path(__file__).parent)],
                            pass_fds=judge.pass_fds, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    judge.start(time.monotonic())
    out, err = proc.communicate()
    res = judge.close()
    if res.status != "ok":
        raise SystemExit(f"judged run failed: {res.status} {res.category} {res.reason}\n{err[-2000:]}")
    return res.eval_seconds, res.details | {"val_bpb": res.val_bpb}


def tiny(args) -> None:
    from autoresearch.data import torch_io
    from autoresearch.data.loader import data_spec, validation_rows

    with tempfile.TemporaryDirectory() as tmp:
        ctx = tiny_context(Path(tmp))
        rows, tb = validation_rows(ctx), data_spec(ctx).tokenizer.token_bytes
        seq, vocab = rows.shape[1] - 1, len(tb)
        cfg = {"vocab": vocab, "seq": seq, "model": {}, "batch_size": args.batch_size or 16, "device": "cpu",
               "threads": args.threads}
        torch.set_num_threads(args.threads)
        model = GPT(vocab, seq)
        torch_io.evaluate_bpb(model, ctx, cfg["batch_size"])  # warm-up
        inproc, jud = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ref = torch_io.evaluate_bpb(model, ctx, cfg["batch_size"])
            inproc.append(time.perf_counter() - t0)
            seconds, details = judged(rows, tb, cfg)
            jud.append(seconds)
        a, b = statistics.median(inproc), statistics.median(jud)
        d = details
        print(f"tiny profile: {rows.shape[0]} rows x T={seq}, vocab {vocab}, batch {cfg['batch_size']}, "
              f"torch threads {cfg['threads']}")
        print(f"  in-process evaluate_bpb: median {a * 1000:.0f} ms  {[round(x * 1000) for x in inproc]}")
        print(f"  judged (subprocess):     median {b * 1000:.0f} ms  {[round(x * 1000) for x in jud]}")
        print(f"  ratio {b / a:.2f}x (target <= 1.5x); val_bpb {ref:.6f} in-process, {d['val_bpb']:.6f} judged")
        print(f"  judged: {d['batches']} batches of {d['batch_size']}, {d['rows']} rows ({d['rows'] - rows.shape[0]} "
              f"probe variants), {d['spot_checks']} logit rows checked, {d['bytes_per_batch'] / 1e6:.2f} MB/batch on "
              f"the wire vs {d['batch_size'] * seq * vocab * 4 / 1e6:.1f} MB of float32 logits")


def datacenter(args) -> None:
    seq, vocab, n_all = 2048, 8192, 40 * 524288 // 2048
    b = args.batch_size or 32
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    n = min(n_all, args.batches * b)
    rng = np.random.default_rng(0)
    rows = rng.integers(4, vocab, (n, seq + 1)).astype(np.int32)
    rows[:, 0] = 0
    tb = rng.integers(1, 8, vocab).astype(np.int32)
    tb[:4] = 0
    model_cfg = {"depth": args.depth, "width": args.width, "heads": max(1, args.width // 128)}
    cfg = {"vocab": vocab, "seq": seq, "model": model_cfg, "batch_size": b, "device": device,
           "threads": torch.get_num_threads()}
    model = GPT(vocab, seq, **model_cfg).to(device)
    x = torch.from_numpy(rows[:b, :-1].astype(np.int64)).to(device)
    y = torch.from_numpy(rows[:b, 1:].astype(np.int64)).to(device)
    with torch.no_grad():  # the in-process cost of one batch: forward + float32 cross-entropy
        for i in range(4):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            F.cross_entropy(model(x).float().view(-1, vocab), y.view(-1), reduction="sum").item()
            per_batch = time.perf_counter() - t0
    seconds, d = judged(rows, tb, cfg)
    per_judged = seconds / d["batches"]
    full = d["batch_size"] * seq * vocab * 4
    print(f"datacenter shape: T={seq}, vocab {vocab}, {n} of {n_all} rows, batch {b}, device {device}, "
          f"model depth {args.depth} width {args.width}")
    print(f"  in-process cost per batch (forward + cross-entropy): {per_batch * 1000:.0f} ms")
    print(f"  judged per batch: {per_judged * 1000:.0f} ms ({d['batches']} batches incl. probes, {seconds:.1f} s)")
    print(f"  wire per batch: {d['bytes_per_batch'] / 1e6:.2f} MB vs {full / 1e9:.2f} GB of float32 logits "
          f"({d['bytes_per_batch'] / full:.2e})")
    print(f"  extrapolated full evaluation ({n_all} rows + {n_all // 8} probe rows): "
          f"in-process ~{per_batch * n_all / b:.0f} s, judged ~{per_judged * (n_all * 9 // 8) / b:.0f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=("tiny", "datacenter"), default="tiny")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--batches", type=int, default=8, help="datacenter: evaluate this many batches of rows")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--device")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both sides")
    a = p.parse_args()
    tiny(a) if a.shape == "tiny" else datacenter(a)
