"""The progress chart: val_bpb of every experiment over experiment number.

Kept experiments are green and labelled with their (shortened) descriptions, discarded
ones grey, the running best is a step line, and crashes are red crosses on the bottom
axis. matplotlib is imported lazily, with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from autoresearch.errors import ArError

MAX_LABELS = 40  # beyond this, only the biggest improvements are labelled
LABEL_CHARS = 40


def _shorten(text: str, limit: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _running_best(view) -> list[Optional[float]]:
    """The best of the summary's group (budget, backend) after each row."""
    key, out, best = view.summary().key, [], None
    for e in view.entries:
        if e.key == key and e.counts and (view.ancestry is None or e.row.commit[:7] in view.ancestry):
            best = e.row.val_bpb if best is None else min(best, e.row.val_bpb)
        out.append(best)
    return out


def draw_progress(ax, view) -> None:
    """Draw the chart of a ui.view.View on a matplotlib Axes (`ar plot` and `ar report`)."""
    rows = [e.row for e in view.entries]
    xs = list(range(1, len(rows) + 1))
    scored = [(x, r) for x, r in zip(xs, rows) if r.status != "crash" and r.val_bpb > 0]
    kept = [(x, r) for x, r in scored if r.status == "keep"]
    other = [(x, r) for x, r in scored if r.status != "keep"]
    crashes = [x for x, r in zip(xs, rows) if r.status == "crash"]
    stopped = [x for x, r in zip(xs, rows) if r.status != "crash" and r.val_bpb <= 0]  # stopped early: no value
    # The y range follows the kept runs (plus a margin), so one wild discard does not
    # flatten the interesting part; points above it are drawn on the top edge.
    ref = [r.val_bpb for _, r in (kept or scored)] or [1.0]
    # Everything below the best is shown (a lucky discard included); only the top is clipped.
    lo, hi = min(ref + [r.val_bpb for _, r in scored]), max(ref)
    span = max(hi - lo, 0.02 * hi, 1e-3)
    bottom, top = lo - 0.25 * span, hi + 0.35 * span
    edge = top - 0.02 * (top - bottom)
    if other:
        inside = [(x, r.val_bpb) for x, r in other if r.val_bpb <= edge]
        ax.scatter([x for x, _ in inside], [v for _, v in inside], s=22, color="#b0b0b0", zorder=2,
                   label=f"discarded ({len(other)})")
        high = [x for x, r in other if r.val_bpb > edge]
        if high:  # on the top edge, as triangles, so nobody reads a wrong value off them
            ax.scatter(high, [edge] * len(high), marker="^", s=40, color="#909090", zorder=2, label="discarded, above the scale")
    if kept:
        ax.scatter([x for x, _ in kept], [r.val_bpb for _, r in kept], s=48, color="#2ca02c", edgecolor="#1a661a",
                   zorder=4, label=f"kept ({len(kept)})")
        # The running best as a step line through to the last experiment.
        after = _running_best(view)
        steps = [(x, b) for x, b in zip(xs + [xs[-1] + 0.5], after + after[-1:]) if b is not None]
        ax.step([x for x, _ in steps], [b for _, b in steps], where="post", color="#2ca02c", alpha=0.6, lw=1.8,
                zorder=3, label="best so far")
        _label_kept(ax, kept)
    if crashes:
        ax.scatter(crashes, [bottom + 0.015 * (top - bottom)] * len(crashes), marker="x", s=40, color="#d62728",
                   zorder=5, clip_on=False, label=f"crashed ({len(crashes)})")
    if stopped:  # worse than the best while training: above the scale, as grey crosses
        ax.scatter(stopped, [edge] * len(stopped), marker="x", s=40, color="#909090", zorder=2,
                   label=f"stopped early ({len(stopped)})")
    ax.set_xlabel("experiment")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.set_xlim(0.5, len(rows) + 0.5 + max(1, len(rows) * 0.02))
    ax.set_ylim(bottom, top)
    ax.grid(True, alpha=0.25)
    ax.legend(loc="upper right", fontsize=9, framealpha=0.9)


def plot_progress(view, out: Path, title: Optional[str] = None) -> Path:
    """Write the chart of a ui.view.View to `out` (PNG) and return the path."""
    if not view.entries:
        raise ArError("results.tsv has no experiments yet; run `ar run` first")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 7), dpi=120)
    draw_progress(ax, view)
    s = view.summary()
    head = title or "autoresearch progress"
    if s.baseline is not None and s.best is not None:
        head += f": {s.baseline:.6f} \u2192 {s.best:.6f} val_bpb ({-(s.improvement_pct or 0):+.2f}%)"
    ax.set_title(head, fontsize=13)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png")
    except OSError as e:
        raise ArError(f"cannot write {out}: {e}") from None
    finally:
        plt.close(fig)
    return out


def _label_kept(ax, kept) -> None:
    """Label kept points with their descriptions; with many, only the biggest steps."""
    chosen = kept
    if len(kept) > MAX_LABELS:
        gains = [(kept[i - 1][1].val_bpb - kept[i][1].val_bpb if i else float("inf"), i) for i in range(len(kept))]
        keep_idx = {i for _, i in sorted(gains, reverse=True)[:MAX_LABELS]}
        chosen = [k for i, k in enumerate(kept) if i in keep_idx]
    for n, (x, r) in enumerate(chosen):
        ax.annotate(
            _shorten(r.description or r.commit),
            (x, r.val_bpb),
            xytext=(4, 8 if n % 2 == 0 else -12),
            textcoords="offset points",
            fontsize=7.5,
            rotation=20,
            color="#1a661a",
            zorder=6,
        )
