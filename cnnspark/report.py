"""``cnnspark report``: one self-contained HTML page of deduplication statistics with plots.

Plots are drawn with matplotlib's Agg backend, saved as PNG and embedded as ``data:`` URIs; the
page has inline CSS only (no scripts, fonts, stylesheets or links to fetch). Each plot sits in a
``<figure data-plot=NAME data-points=N>``: N is how many bars it draws (0 with an empty-state
picture such as "no quarantined files"). The numbers come from :mod:`cnnspark.stats`, the same
code behind ``cnnspark stats``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnspark.errors import ConfigError
from cnnspark.sizes import format_size
from cnnspark.stats import ReportData, report_data

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from pyspark.sql import SparkSession

    from cnnspark.lake import Lake

COLORS = {"logical": "#9aa5b1", "physical": "#2f7ed8", "stored": "#0b3d91", "accent": "#e4572e"}


@dataclass(frozen=True)
class Plot:
    """One rendered plot: ``points`` bars drawn (0 for an empty-state picture)."""

    name: str
    title: str
    png: bytes
    points: int
    caption: str = ""


# ---------------------------------------------------------------------------------------------
# Drawing helpers


def _figure(width: float = 8.0, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    return fig, ax


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _byte_unit(largest: float) -> tuple[float, str]:
    for factor, unit in ((1024**4, "TiB"), (1024**3, "GiB"), (1024**2, "MiB"), (1024, "KiB")):
        if largest >= factor:
            return factor, unit
    return 1, "bytes"


def _empty(name: str, title: str, message: str) -> Plot:
    fig, ax = _figure(8.0, 1.6)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="#555555", transform=ax.transAxes)
    return Plot(name, title, _png(fig), 0, message)


def _integers(axis) -> None:
    """Whole-number ticks on a count axis."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _pad_categories(ax: Axes, n: int) -> None:
    """Keep bars of one or two categories from filling the whole width."""
    if n < 4:
        ax.set_xlim(-1.2, n - 1 + 1.2)


def _short(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# The plots


def plot_savings(data: ReportData) -> Plot:
    """Per dataset: logical vs physical vs stored bytes, with the dedup ratio on top."""
    rows = [r for r in data.stats if r["scope"] == "dataset"]
    title = "Savings per dataset"
    if not rows:
        return _empty("savings", title, "no datasets in the lake yet")
    import numpy as np

    factor, unit = _byte_unit(max(r["logical_bytes"] for r in rows))
    fig, ax = _figure(max(8.0, 0.9 * len(rows) + 3), 4.0)
    x = np.arange(len(rows))
    w = 0.27
    for i, (key, label) in enumerate((("logical_bytes", "logical"), ("physical_bytes", "physical (chunk payload)"), ("stored_bytes", "stored (compressed)"))):
        ax.bar(x + (i - 1) * w, [r[key] / factor for r in rows], w, label=label, color=COLORS[label.split()[0]])
    for xi, r in zip(x, rows, strict=True):
        ratio = "-" if r["dedup_ratio"] is None else f"{r['dedup_ratio']:.2f}x"
        ax.annotate(f"{ratio}\n{r['savings_percent']:.0f}% saved", (xi, r["logical_bytes"] / factor), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [_short(r["dataset"]) for r in rows], rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel(unit)
    ax.margins(y=0.2)
    _pad_categories(ax, len(rows))
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("each dataset alone: shared chunks count in every dataset that uses them", fontsize=9)
    return Plot("savings", title, _png(fig), 3 * len(rows))


def plot_growth(data: ReportData) -> Plot:
    """Datasets in ingest order: logical bytes each added vs new chunk payload each added."""
    rows = data.growth
    title = "What each dataset (version) added, in ingest order"
    if not rows:
        return _empty("growth", title, "no datasets in the lake yet")
    import numpy as np

    factor, unit = _byte_unit(max(r["logical_bytes"] for r in rows))
    fig, ax = _figure(max(8.0, 0.9 * len(rows) + 3), 3.8)
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["logical_bytes"] / factor for r in rows], 0.4, label="logical bytes of the dataset", color=COLORS["logical"])
    ax.bar(x + 0.2, [r["new_physical_bytes"] / factor for r in rows], 0.4, label="new chunk payload it added", color=COLORS["physical"])
    ax.plot(x, np.cumsum([r["new_physical_bytes"] / factor for r in rows]), "o-", color=COLORS["accent"], label="lake chunk payload so far")
    ax.set_xticks(x, [f"{r['ord']}. {_short(r['dataset'])}" for r in rows], rotation=20 if len(rows) > 4 else 0, ha="right" if len(rows) > 4 else "center")
    ax.set_ylabel(unit)
    _pad_categories(ax, len(rows))
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return Plot("growth", title, _png(fig), 2 * len(rows))


def plot_chunk_sizes(data: ReportData) -> Plot:
    """Histogram of the chunks table's chunk sizes."""
    bins = data.chunk_sizes
    title = "Chunk size distribution"
    if not bins:
        return _empty("chunk_sizes", title, "no chunks in the lake yet")
    factor, unit = _byte_unit(max(b["hi"] for b in bins))
    fig, ax = _figure()
    ax.bar([b["lo"] / factor for b in bins], [b["chunks"] for b in bins], width=[(b["hi"] - b["lo"]) / factor for b in bins], align="edge", color=COLORS["physical"], edgecolor="white", linewidth=0.5)
    ax.set_xlabel(f"chunk size ({unit})")
    ax.set_ylabel("chunks")
    _integers(ax.yaxis)
    total = sum(b["chunks"] for b in bins)
    return Plot("chunk_sizes", title, _png(fig), len(bins), f"{total:,} chunks")


def plot_sharing(data: ReportData) -> Plot:
    """How many files reference each chunk (1 = not shared)."""
    rows = data.sharing
    title = "How many files share each chunk"
    if not rows:
        return _empty("sharing", title, "no chunks referenced yet")
    fig, ax = _figure()
    labels = [str(r["files"]) for r in rows]
    bars = ax.bar(labels, [r["chunks"] for r in rows], color=COLORS["physical"], width=0.6)
    if len(rows) <= 20:
        ax.bar_label(bars, fontsize=8)
    _pad_categories(ax, len(rows))
    _integers(ax.yaxis)
    if max(r["chunks"] for r in rows) > 50 * max(1, min(r["chunks"] for r in rows)):
        ax.set_yscale("log")
    ax.set_xlabel("files referencing the chunk")
    ax.set_ylabel("chunks")
    if len(rows) > 20:
        ax.set_xticks(range(0, len(rows), max(1, len(rows) // 20)))
    shared = sum(r["chunks"] for r in rows if r["files"] > 1)
    return Plot("sharing", title, _png(fig), len(rows), f"{shared:,} chunks are referenced by more than one file")


def plot_duplicates(data: ReportData) -> Plot:
    """Contents with the most identical copies (whole-file duplicates)."""
    rows = data.duplicates
    title = "Most duplicated files"
    if not rows:
        return _empty("duplicates", title, "no file is stored more than once")
    fig, ax = _figure(8.0, max(2.0, 0.35 * len(rows) + 1))
    labels = [f"{r['content_hash'][:10]}  {_short(r['places'][0]['relative_path'] if r['places'] else '', 30)}" for r in rows]
    bars = ax.barh(range(len(rows)), [r["copies"] for r in rows], color=COLORS["physical"], height=0.6)
    ax.bar_label(bars, fontsize=8, padding=2)
    _integers(ax.xaxis)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("copies (manifests with this content)")
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)
    return Plot("duplicates", title, _png(fig), len(rows))


def plot_quarantine(data: ReportData) -> Plot:
    """Quarantined files per reason."""
    rows = data.quarantine
    title = "Quarantined files by reason"
    if not rows:
        return _empty("quarantine", title, "no quarantined files")
    fig, ax = _figure(8.0, max(2.0, 0.45 * len(rows) + 1))
    bars = ax.barh(range(len(rows)), [r["files"] for r in rows], color=COLORS["accent"], height=0.6)
    ax.bar_label(bars, fontsize=8, padding=2)
    _integers(ax.xaxis)
    ax.set_yticks(range(len(rows)), [r["reason"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("files")
    ax.grid(axis="x", alpha=0.3)
    ax.grid(axis="y", visible=False)
    return Plot("quarantine", title, _png(fig), len(rows), f"{sum(r['files'] for r in rows):,} files")


PLOTS: tuple[Callable[[ReportData], Plot], ...] = (
    plot_savings, plot_growth, plot_chunk_sizes, plot_sharing, plot_duplicates, plot_quarantine,
)


# ---------------------------------------------------------------------------------------------
# HTML


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.lake td { font-weight: bold; } tr.dataset td { background: #f5f7fa; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1em; min-width: 9em; }
.card b { display: block; font-size: 1.4em; } .card span { color: #666; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #666; font-size: 0.85em; }
code { font-size: 0.9em; } .note { color: #666; font-size: 0.85em; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _table(columns: Sequence[tuple[str, bool]], rows: Sequence[Sequence[Any]], row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; ``columns`` are (title, numeric) pairs."""
    head = "".join(f'<th class="n">{_e(c)}</th>' if num else f"<th>{_e(c)}</th>" for c, num in columns)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{_e(row_classes[i])}"' if row_classes else ""
        cells = "".join(
            f'<td class="n">{_e(v)}</td>' if num else f"<td>{_e(v)}</td>" for v, (_, num) in zip(row, columns, strict=True)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _figure_html(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    caption = f"<figcaption>{_e(plot.caption)}</figcaption>" if plot.caption else ""
    state = "empty" if plot.points == 0 else "data"
    return (
        f'<figure class="plot" data-plot="{_e(plot.name)}" data-points="{plot.points}" data-state="{state}">'
        f'<img alt="{_e(plot.title)}" src="data:image/png;base64,{data}">{caption}</figure>'
    )


def _ratio(r: dict[str, Any]) -> str:
    return "-" if r["dedup_ratio"] is None else f"{r['dedup_ratio']:.2f}x"


def _summary(data: ReportData) -> str:
    lake = data.lake_row
    quarantined = sum(r["files"] for r in data.quarantine)
    leaks = sum(r["pairs"] for r in data.overlap if r["kind"] == "cross_split")
    cards = [
        (f"{lake['files']:,}", "files"),
        (format_size(lake["logical_bytes"]), "logical bytes"),
        (format_size(lake["physical_bytes"]), "unique chunk payload"),
        (format_size(lake["stored_bytes"]), "stored on disk"),
        (_ratio(lake), "dedup ratio"),
        (f"{lake['savings_percent']:.1f}%", "saved"),
        (f"{sum(1 for r in data.stats if r['scope'] == 'dataset'):,}", "datasets"),
        (f"{quarantined:,}", "quarantined files"),
        (f"{leaks:,}", "train/test identical pairs"),
    ]
    return '<div class="cards">' + "".join(f'<div class="card"><b>{_e(v)}</b><span>{_e(k)}</span></div>' for v, k in cards) + "</div>"


def _stats_table(data: ReportData) -> str:
    columns = [("scope", False), ("dataset", False), ("split", False), ("files", True), ("logical", True), ("physical", True),
               ("stored", True), ("exclusive", True), ("unique chunks", True), ("ratio", True), ("savings", True)]
    rows = [
        (r["scope"], r["dataset"], r["split"], f"{r['files']:,}", format_size(r["logical_bytes"]), format_size(r["physical_bytes"]),
         format_size(r["stored_bytes"]), format_size(r["exclusive_bytes"]), f"{r['unique_chunks']:,}", _ratio(r), f"{r['savings_percent']:.1f}%")
        for r in data.stats
    ]
    return _table(columns, rows, [r["scope"] for r in data.stats])


def _overlap_html(data: ReportData) -> str:
    if not data.overlap:
        return "<p>No identical files across splits or datasets.</p>"
    columns = [("kind", False), ("dataset a", False), ("split a", False), ("dataset b", False), ("split b", False),
               ("pairs", True), ("contents", True), ("files a", True), ("files b", True), ("label conflicts", True)]
    rows = [(r["kind"], r["dataset_a"], r["split_a"], r["dataset_b"], r["split_b"], f"{r['pairs']:,}", f"{r['contents']:,}",
             f"{r['files_a']:,}", f"{r['files_b']:,}", f"{r['label_conflicts']:,}") for r in data.overlap]
    out = _table(columns, rows)
    if data.leakage:
        out += "<h3>Identical files across splits (first pairs)</h3>" + _table(
            [("dataset", False), ("split", False), ("path", False), ("label", False), ("split", False), ("path", False), ("label", False), ("size", True)],
            [(r["dataset"], r["split_a"], r["path_a"], r["label_a"], r["split_b"], r["path_b"], r["label_b"], format_size(r["size"])) for r in data.leakage],
        )
    return out


def _duplicates_html(data: ReportData) -> str:
    if not data.duplicates:
        return ""
    rows = [
        (r["content_hash"], f"{r['copies']:,}", format_size(r["size"]), format_size(r["saved_bytes"]),
         "; ".join(f"{p['dataset']}/{p['split']}: {p['relative_path']}" for p in r["places"])
         + (" …" if len(r["places"]) < r["copies"] else ""))
        for r in data.duplicates
    ]
    return _table([("content hash", False), ("copies", True), ("size", True), ("saved", True), ("where", False)], rows)


def _quarantine_html(data: ReportData) -> str:
    if not data.quarantine:
        return ""
    rows = [(r["reason"], f"{r['files']:,}", format_size(r["bytes"])) for r in data.quarantine]
    return _table([("reason", False), ("files", True), ("size", True)], rows) + (
        '<p class="note">list them with <code>cnnspark sql --lake LAKE "SELECT * FROM quarantine"</code></p>'
    )


def render_html(data: ReportData, plots: Sequence[Plot] | None = None) -> str:
    """The whole page as one string."""
    plots = list(plots) if plots is not None else [make(data) for make in PLOTS]
    by_name = {p.name: p for p in plots}
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")

    def section(name: str, extra: str = "", note: str = "") -> str:
        p = by_name[name]
        note_html = f'<p class="note">{_e(note)}</p>' if note else ""
        return f"<h2>{_e(p.title)}</h2>{note_html}{_figure_html(p)}{extra}"

    body = [
        f"<h1>cnnspark deduplication report</h1><p class=\"sub\">lake <code>{_e(data.lake)}</code> · generated {generated}</p>",
        _summary(data),
        "<h2>Statistics per scope</h2>",
        (
            '<p class="note">physical = distinct chunk payload the scope references (a chunk shared by two datasets counts in both; '
            "the lake row counts it once). stored = bytes on disk after Parquet compression (lake row: the chunks table's files; "
            "other rows: a proportional share). exclusive = payload no other scope of the same level references.</p>"
        ),
        _stats_table(data),
        section("savings"),
        section("growth", note="a chunk is attributed to the first dataset, by first ingest, that references it"),
        section("chunk_sizes"),
        section("sharing"),
        "<h2>Identical files across splits and datasets</h2>",
        _overlap_html(data),
        section("duplicates", _duplicates_html(data)),
        section("quarantine", _quarantine_html(data)),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>cnnspark report: {_e(data.lake)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


@dataclass(frozen=True)
class ReportResult:
    path: str
    bytes: int
    plots: dict[str, int]  # plot name -> points drawn


def write_report(spark: SparkSession, lake: Lake | str, out: str | Path, *, top: int = 10) -> ReportResult:
    """Gather the lake's statistics and write the HTML page to ``out``."""
    if top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    path = Path(out).expanduser()
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name such as report.html")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {path.parent} does not exist; create it first")
    data = report_data(spark, lake, top=top)
    plots = [make(data) for make in PLOTS]
    text = render_html(data, plots)
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot write the report to {path}: {e.strerror}") from e
    return ReportResult(str(path), len(text.encode("utf-8")), {p.name: p.points for p in plots})
