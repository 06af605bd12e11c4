"""Tests for cnnspark.report: the HTML page renders, is self-contained, and every plot has data.

The lake holds real images with duplicates, a train/test leak, and two files that go to
quarantine (a zero-byte file and a text file named .png), so every plot has something to draw.
"""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from imagegen import textured, write_image
from PIL import Image

from cnnspark.chunking import ChunkingParams
from cnnspark.ingest import IngestOptions, ingest
from cnnspark.report import PLOTS, render_html, write_report
from cnnspark.stats import ReportData

PARAMS = ChunkingParams(min_size=2048, avg_size=8192, max_size=32768)
PLOT_NAMES = ("savings", "growth", "chunk_sizes", "sharing", "duplicates", "quarantine")


class PageParser(HTMLParser):
    """Collects every URL-bearing attribute, the figures and the tags of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.figures: list[dict[str, str]] = []
        self.images: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        values = {k: v or "" for k, v in attrs}
        for key in ("src", "href", "srcset", "poster", "data", "action", "background"):
            if key in values:
                self.urls.append((tag, key, values[key]))
        if tag == "figure":
            self.figures.append(values)
        if tag == "img":
            self.images.append(values.get("src", ""))


def parse(text: str) -> PageParser:
    parser = PageParser()
    parser.feed(text)
    return parser


@pytest.fixture(scope="module")
def report_lake(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(3)
    train, test = root / "train", root / "test"
    for i in range(3):
        write_image(train / "cat" / f"c{i}.tif", textured(rng, 96, 128))
    write_image(train / "dog" / "d0.png", textured(rng, 96, 128))
    shutil.copyfile(train / "cat/c0.tif", train / "dog/c0_copy.tif")
    (train / "dog" / "empty.png").write_bytes(b"")
    (train / "dog" / "notes.png").write_text("this is not an image\n")
    write_image(test / "cat" / "t0.tif", textured(rng, 96, 128))
    shutil.copyfile(train / "cat/c1.tif", test / "cat/c1_leak.tif")
    lake = root / "lake"
    for split, folder in (("train", train), ("test", test)):
        ingest(spark, IngestOptions(source=str(folder), lake=str(lake), dataset="pets", split=split, chunking=PARAMS), progress=None)
    out = root / "report.html"
    result = write_report(spark, str(lake), out)
    return {"lake": lake, "out": out, "result": result, "root": root}


def test_report_is_written_with_every_plot_drawn(report_lake):
    out, result = report_lake["out"], report_lake["result"]
    assert out.is_file() and out.stat().st_size == result.bytes
    assert set(result.plots) == set(PLOT_NAMES)
    assert all(points > 0 for points in result.plots.values()), result.plots
    page = parse(out.read_text(encoding="utf-8"))
    figures = {f["data-plot"]: f for f in page.figures}
    assert set(figures) == set(PLOT_NAMES)
    for name, figure in figures.items():
        assert int(figure["data-points"]) > 0 and figure["data-state"] == "data", name
    assert result.plots["quarantine"] == 2  # zero_bytes and not_an_image


def test_report_links_only_embedded_images(report_lake):
    text = report_lake["out"].read_text(encoding="utf-8")
    page = parse(text)
    assert page.urls, "the page should embed its plots"
    for tag, attribute, value in page.urls:
        assert tag == "img" and attribute == "src" and value.startswith("data:image/png;base64,"), (tag, attribute, value[:60])
    assert not page.tags & {"script", "link", "iframe", "object", "embed"}
    assert "url(" not in text and "@import" not in text and "http://" not in text and "https://" not in text


def test_each_embedded_plot_is_a_real_picture(report_lake):
    page = parse(report_lake["out"].read_text(encoding="utf-8"))
    assert len(page.images) == len(PLOT_NAMES)
    for src in page.images:
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 100
            pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 5  # something is drawn, not a blank canvas


def test_report_tables_show_the_numbers(report_lake):
    text = report_lake["out"].read_text(encoding="utf-8")
    assert "cnnspark deduplication report" in text
    for word in ("pets", "c1_leak.tif", "cat/c1.tif", "c0_copy.tif", "zero_bytes", "not_an_image", "cross_split"):
        assert word in text, word
    assert "train/test identical pairs" in text


def test_report_command_in_process(report_lake, capsys):
    from cnnspark.cli import main

    out = report_lake["root"] / "again.html"
    assert main(["report", "--lake", str(report_lake["lake"]), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert parse(out.read_text(encoding="utf-8")).figures
    assert main(["report", "--lake", str(report_lake["lake"]), "--out", str(report_lake["root"] / "no" / "dir.html")]) == 2


def test_empty_lake_parts_render_as_empty_states():
    data = ReportData(
        lake="/nowhere",
        stats=[{
            "scope": "lake", "dataset": "*", "split": "*", "files": 0, "logical_bytes": 0, "unique_chunks": 0,
            "physical_bytes": 0, "exclusive_chunks": 0, "exclusive_bytes": 0, "stored_bytes": 0,
            "dedup_ratio": None, "savings_percent": 0.0,
        }],
        growth=[], chunk_sizes=[], sharing=[], duplicates=[], quarantine=[], overlap=[], leakage=[],
    )
    plots = [make(data) for make in PLOTS]
    assert all(p.points == 0 and p.png.startswith(b"\x89PNG") for p in plots)
    text = render_html(data, plots)
    assert "no quarantined files" in text
    figures = {f["data-plot"]: f for f in parse(text).figures}
    assert figures["quarantine"]["data-state"] == "empty"
