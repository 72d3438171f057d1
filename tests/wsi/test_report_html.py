"""The necrosis report a pathologist can check: images, scale bar, legend, the offline viewer,
the model's figures, the new result states, and escaping of user-given names.

The slow tests read the report of a real run (the shipped model on a real mosaic slide, real
Dask); the quick ones build a run's result rows by hand to reach states a mosaic does not give
(hostile names, a moved slide, not assessable, an uncertain grade).
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from osteomics.wsi.mosaic import MosaicComposition
from osteomics.wsi.necrosis import CLASS_STYLE, TISSUE_CLASSES
from osteomics.wsi.report_html import model_section, report_html, scale_bar, write_report
from osteomics.wsi.results import CaseNecrosis, NecrosisRun, SlideNecrosis, SlideTiles
from osteomics.wsi.scoring import NecrosisParameters, score_slides
from osteomics.wsi.viewer import (
    MAX_SIDE_PX,
    TILE_PX,
    ViewerPage,
    ViewerUnavailable,
    page_stem,
    viewer_max_side_px,
)

QUICK = NecrosisParameters(bootstrap_resamples=200)


class Elements(HTMLParser):
    """Every start tag of a page with its attributes (data URIs included)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, **match: str) -> list[dict[str, str]]:
        """Tags whose attributes hold the given words (``class_`` for ``class``)."""
        return [
            attrs
            for t, attrs in self.tags
            if t == tag and all(m in attrs.get(k.rstrip("_"), "").split() for k, m in match.items())
        ]


def decode_image(uri: str) -> Image.Image:
    assert uri.startswith("data:image/"), uri[:40]
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


# ---------------------------------------------------------------- a real run (slow)


@pytest.fixture(scope="module")
def real_run(
    mosaic_2um: MosaicComposition, client: Any, tmp_path_factory: pytest.TempPathFactory
) -> NecrosisRun:
    out = tmp_path_factory.mktemp("report-run")
    return score_slides([Path(mosaic_2um.path)], out, QUICK, client=client)


@pytest.fixture(scope="module")
def report(real_run: NecrosisRun) -> Elements:
    return Elements((Path(real_run.out_dir) / "report.html").read_text())


@pytest.mark.slow
def test_report_shows_the_plain_thumbnail_beside_the_class_map(
    real_run: NecrosisRun, report: Elements
) -> None:
    (row,) = real_run.slides
    tiles = real_run.tiles[row.slide]
    h, w = tiles.thumbnail.shape[:2]
    plain = [a for t, a in report.tags if t == "img" and a.get("alt", "").startswith("H&E thumb")]
    assert len(plain) == 1
    assert decode_image(plain[0]["src"]).size == (w, h)
    (class_map,) = report.find("img", id="map-0")
    overlay = np.asarray(decode_image(class_map["src"]).convert("RGBA"))
    assert overlay.shape[:2] == (h, w)
    # Each tile's most probable class is painted in its colour at the tile's centre.
    winners = tiles.area_mm2.argmax(axis=1)
    for x, y, k in zip(tiles.x_px, tiles.y_px, winners, strict=True):
        cx = int((x + tiles.side_px / 2) / tiles.thumbnail_downsample)
        cy = int((y + tiles.side_px / 2) / tiles.thumbnail_downsample)
        assert tuple(overlay[cy, cx]) == (*CLASS_STYLE[TISSUE_CLASSES[k]][1], 255)
    assert overlay[..., 3].any() and not overlay[..., 3].all()  # glass stays clear
    assert report.find("input", class_="opacity")[0]["data-target"] == "map-0"


@pytest.mark.slow
def test_scale_bar_length_follows_the_slides_um_per_px(
    mosaic_2um: MosaicComposition, real_run: NecrosisRun, report: Elements
) -> None:
    tiles = real_run.tiles[real_run.slides[0].slide]
    thumb_w = tiles.thumbnail.shape[1]
    # Oracle from the mosaic's own geometry: thumbnail pixels over the slide's width in mm.
    px_per_mm = thumb_w / (mosaic_2um.width_px * mosaic_2um.mpp / 1000.0)
    bars = report.find("div", class_="sb")
    assert len(bars) == 2  # on the plain thumbnail and on the class map
    for bar in bars:
        mm, px = float(bar["data-mm"]), float(bar["data-px"])
        assert px == pytest.approx(mm * px_per_mm, rel=0.01)
        width = float(re.search(r"width:([0-9.]+)%", bar["style"]).group(1))  # type: ignore[union-attr]
        assert width == pytest.approx(100 * px / thumb_w, abs=0.01)
        assert 0 < px <= thumb_w / 4


@pytest.mark.slow
def test_legend_gives_each_class_its_colour_area_and_share(real_run: NecrosisRun) -> None:
    text = (Path(real_run.out_dir) / "report.html").read_text()
    slides = pd.read_csv(Path(real_run.out_dir) / "necrosis_slides.csv")
    shares = []
    for name in TISSUE_CLASSES:
        label, colour = CLASS_STYLE[name]
        row = re.search(rf"<tr data-class='{name}'>(.*?)</tr>", text)
        assert row, name
        cells = re.findall(r"<td>(.*?)</td>", row.group(1))
        assert f"background:rgb{colour}" in row.group(1)
        assert cells[1] == label
        assert float(cells[2]) == pytest.approx(slides[f"{name}_mm2"].iloc[0], abs=0.006)
        shares.append(float(cells[3].rstrip(" %")))
    assert sum(shares) == pytest.approx(100.0, abs=0.2)


@pytest.mark.slow
def test_viewer_writes_a_deepzoom_pyramid_of_the_slide(
    mosaic_2um: MosaicComposition, real_run: NecrosisRun, report: Elements
) -> None:
    out = Path(real_run.out_dir)
    stem = page_stem(real_run.slides[0].slide)
    (link,) = [a for a in report.find("a") if a.get("href", "").startswith("viewer/")][:1]
    assert link["href"] == f"viewer/{stem}.html" and (out / link["href"]).is_file()
    pyramid = out / "viewer" / f"{stem}_files"
    # 2 µm/px already: the finest level is the slide itself, 3072 x 2048.
    max_level = math.ceil(math.log2(max(mosaic_2um.width_px, mosaic_2um.height_px)))
    assert sorted(int(p.name) for p in pyramid.iterdir()) == list(range(max_level + 1))
    finest = pyramid / str(max_level)
    cols, rows = math.ceil(mosaic_2um.width_px / TILE_PX), math.ceil(mosaic_2um.height_px / TILE_PX)
    assert len(list(finest.glob("*.jpeg"))) == cols * rows
    last = Image.open(finest / f"{cols - 1}_{rows - 1}.jpeg")
    assert last.size == (
        mosaic_2um.width_px - (cols - 1) * TILE_PX,
        mosaic_2um.height_px - (rows - 1) * TILE_PX,
    )
    assert Image.open(pyramid / "0" / "0_0.jpeg").size == (1, 1)


@pytest.mark.slow
def test_viewer_overlays_have_one_block_per_grid_tile_in_its_class_colour(
    real_run: NecrosisRun,
) -> None:
    out = Path(real_run.out_dir)
    slide = real_run.slides[0].slide
    stem = page_stem(slide)
    tiles = pd.read_parquet(out / "slides" / f"{slide}.tiles.parquet")
    side = float(tiles["side_px"].iloc[0])
    cols = np.rint(tiles["x_px"] / side).astype(int)
    rows = np.rint(tiles["y_px"] / side).astype(int)
    winner = tiles[[f"p_{c}" for c in TISSUE_CLASSES]].to_numpy().argmax(axis=1)
    page = (out / "viewer" / f"{stem}.html").read_text()
    conf = json.loads(re.search(r"const CONF = (\{.*?\});", page).group(1))  # type: ignore[union-attr]
    sizes = set()
    for k, name in enumerate(TISSUE_CLASSES):
        (entry,) = [o for o in conf["overlays"] if o["name"] == name]
        overlay = np.asarray(Image.open(out / "viewer" / entry["url"]).convert("RGBA"))
        sizes.add(overlay.shape[:2])
        block = overlay.shape[1] // (cols.max() + 1)
        assert overlay.shape[:2] == ((rows.max() + 1) * block, (cols.max() + 1) * block)
        painted = overlay[rows * block + block // 2, cols * block + block // 2]
        assert (painted[:, 3] == 255).tolist() == (winner == k).tolist()
        assert (painted[winner == k, :3] == CLASS_STYLE[name][1]).all()
    assert len(sizes) == 1
    # The overlay spans the grid's extent over the pyramid's width (viewport units).
    assert conf["overlayWidth"] == pytest.approx((cols.max() + 1) * side / conf["width"])


@pytest.mark.slow
def test_viewer_page_loads_only_files_of_the_run_folder(real_run: NecrosisRun) -> None:
    viewer = Path(real_run.out_dir) / "viewer"
    page_path = viewer / f"{page_stem(real_run.slides[0].slide)}.html"
    page = page_path.read_text()
    assert "http" not in page and "//" not in re.sub(r"<script>.*?</script>", "", page, flags=re.S)
    elements = Elements(page)
    refs = [a["src"] for t, a in elements.tags if t == "script" and "src" in a]
    refs += [a["href"] for t, a in elements.tags if t == "a"]
    assert refs and all((viewer / ref).resolve().is_file() for ref in refs), refs
    conf = json.loads(re.search(r"const CONF = (\{.*?\});", page).group(1))  # type: ignore[union-attr]
    assert (viewer / conf["tiles"] / str(conf["maxLevel"]) / "0_0.jpeg").is_file()
    assert (viewer / "osd" / "images" / "home_rest.png").is_file()  # the buttons' prefixUrl
    assert conf["pixelsPerMeter"] == pytest.approx(1e6 / real_run.slides[0].mpp)


@pytest.mark.slow
def test_report_states_the_models_validated_figures_and_limits(real_run: NecrosisRun) -> None:
    text = (Path(real_run.out_dir) / "report.html").read_text()
    card = json.loads(
        (
            Path(__file__).parents[2] / "wsi/models/osteosarcoma-necrosis-v2/model_card.json"
        ).read_text()
    )
    cv = card["cross_validation"]
    assert f"tile accuracy <b>{cv['accuracy']:.2f}</b>" in text
    for patient, fig in cv["leave_one_patient_out"].items():
        assert f"{patient} ({fig['n']} tiles): 3-class accuracy {fig['accuracy']:.2f}" in text
    assert "Confound:" in text and "Detection limit: one tile" in text
    patients = sorted({p for counts in card["training"]["counts_by_case"].values() for p in counts})
    assert f"{card['training']['n_images']} tiles of {len(patients)} patient(s)" in text


# ---------------------------------------------------------------- hand-made rows (quick)


def small_tiles() -> SlideTiles:
    """A 6 x 4 grid of 512 px tiles on a 3072 x 2048 slide, thumbnail downsample 32."""
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.arange(6) * 512, np.arange(4) * 512)
    n = xs.size
    probabilities = rng.dirichlet(np.ones(3), size=n)
    return SlideTiles(
        x_px=xs.ravel(),
        y_px=ys.ravel(),
        side_px=512.0,
        tissue_fraction=np.ones(n),
        probabilities=probabilities,
        classes=TISSUE_CLASSES,
        area_mm2=probabilities * (512 * 2 / 1000) ** 2,
        thumbnail=rng.integers(0, 255, size=(64, 96, 3), dtype=np.uint8),
        thumbnail_downsample=32.0,
    )


def hand_made_run(tmp_path: Path, slide: str, case: CaseNecrosis, path: Path) -> NecrosisRun:
    row = SlideNecrosis(
        slide=slide, case=case.case, path=str(path), status="ok", mpp=2.0, n_tiles=24,
        tile_um=1024.0, viable_mm2=1.0, necrotic_mm2=3.0, non_tumour_mm2=1.0, necrosis_rate=75.0,
    )  # fmt: skip
    return NecrosisRun(
        out_dir=str(tmp_path),
        parameters=QUICK,
        model_card={"name": "osteosarcoma-necrosis-v2", "cv_accuracy": 0.9},
        slides=[row],
        ignored=[],
        started="2026-11-30T00:00:00+00:00",
        cases=[case],
        tiles={slide: small_tiles()},
    )


def a_case(name: str, **changes: Any) -> CaseNecrosis:
    values: dict[str, Any] = dict(
        case=name, status="ok", reason="", n_slides=1, necrosis_rate=75.0, ci_low=60.0,
        ci_high=88.0, huvos_grade="II", responder="poor", viable_mm2=1.0, necrotic_mm2=3.0,
        non_tumour_mm2=1.0, slides=[],
    )  # fmt: skip
    values.update(changes)
    return CaseNecrosis(**values)


HOSTILE = "<script>alert('x')</script>&\"'"


def test_hostile_slide_case_and_detail_text_is_escaped(tmp_path: Path) -> None:
    case = a_case(HOSTILE, details={"<b>site</b>": "<img src=x onerror=alert(1)>"})
    case.reason = "<i>reason</i>"
    run = hand_made_run(tmp_path, HOSTILE, case, tmp_path / "gone.svs")
    text = report_html(run)
    assert "<script>alert" not in text and "<img src=x" not in text and "<b>site" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&amp;&quot;&#x27;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    stem = page_stem(HOSTILE)
    assert re.fullmatch(r"[A-Za-z0-9._-]+", stem) and stem != page_stem(HOSTILE + "x")


def test_moved_slide_leaves_the_report_whole_and_says_where_it_looked(tmp_path: Path) -> None:
    gone = tmp_path / "moved away" / "block<1>.svs"
    run = hand_made_run(tmp_path, "block<1>", a_case("C1"), gone)
    viewers = write_report(run, tmp_path)
    assert isinstance(viewers["block<1>"], ViewerUnavailable)
    text = (tmp_path / "report.html").read_text()
    assert (
        f"viewer not available: slide not found at {gone}".replace("<", "&lt;").replace(">", "&gt;")
        in text
    )
    assert not (tmp_path / "viewer").exists()
    elements = Elements(text)
    assert decode_image(elements.find("img", id="map-0")[0]["src"]).size == (96, 64)


def test_not_assessable_case_gives_its_reason_and_no_grade(tmp_path: Path) -> None:
    case = a_case(
        "C2", status="not_assessable", reason="not an H&E stain (fluorescence)",
        necrosis_rate=None, ci_low=None, ci_high=None, huvos_grade=None, responder=None,
    )  # fmt: skip
    text = report_html(hand_made_run(tmp_path, "s", case, tmp_path / "s.svs"))
    section = text.split("<section><h2>Case C2</h2>")[1].split("</section>")[0]
    assert "Not assessable: not an H&amp;E stain (fluorescence)" in section
    assert "Huvos grade" not in section and "responder" not in section


def test_uncertain_grade_names_the_grades_the_interval_spans(tmp_path: Path) -> None:
    case = a_case(
        "C3", necrosis_rate=88.0, ci_low=80.0, ci_high=95.0, huvos_grade="uncertain",
        huvos_range="II-III", responder="uncertain", interval_method="spatial block bootstrap",
        detected_tissue_mm2=12.5, scored_tissue_mm2=10.25,
    )  # fmt: skip
    text = report_html(hand_made_run(tmp_path, "s", case, tmp_path / "s.svs"))
    assert "Huvos grade <b>uncertain</b> (the interval spans grades II-III)" in text
    assert "responder status <b>uncertain</b>" in text
    assert "Interval: spatial block bootstrap." in text
    assert "Tissue scored 10.25 mm² of 12.50 mm² detected" in text


def test_scale_bar_is_the_longest_round_length_within_a_quarter_of_the_image() -> None:
    bar = scale_bar(0.5, 16.0, 1000)  # 125 px per mm
    assert bar is not None and (bar.length_mm, bar.length_px) == (2.0, 250.0)
    bar = scale_bar(0.25, 1.0, 2000)  # 4000 px per mm
    assert bar is not None and (bar.length_mm, bar.length_px) == (0.1, 400.0)
    assert scale_bar(None, 16.0, 1000) is None


def test_viewer_resolution_is_bounded_by_8192_px_and_2_um_per_px() -> None:
    assert viewer_max_side_px(100_000, 80_000, 0.25) == MAX_SIDE_PX
    assert viewer_max_side_px(20_000, 10_000, 0.5) == 5000  # 2 µm/px is coarser than 8192
    assert viewer_max_side_px(3072, 2048, 2.0) == 3072
    assert viewer_max_side_px(2220, 2967, 0.499) == 742  # 4 px of 0.499 µm: 1.996 µm/px
    assert viewer_max_side_px(3072, 2048, None) == 3072


def test_viewer_page_of_a_hostile_slide_name_is_escaped_and_safely_named(
    cmu_svs: Path, tmp_path: Path
) -> None:
    run = hand_made_run(tmp_path, HOSTILE, a_case("C4"), cmu_svs)
    run.slides[0].mpp = 0.499
    viewers = write_report(run, tmp_path)
    page = viewers[HOSTILE]
    assert isinstance(page, ViewerPage)
    assert re.fullmatch(r"viewer/[A-Za-z0-9._-]+\.html", page.page)
    text = (tmp_path / page.page).read_text()
    assert "<script>alert" not in text and text.count("</script>") == 3  # the page's own three
    conf = json.loads(re.search(r"const CONF = (\{.*?\});", text).group(1))  # type: ignore[union-attr]
    assert (tmp_path / "viewer" / conf["tiles"]).is_dir()
    # CMU-1-Small-Region is 2220 x 2967 px at 0.499 µm/px: read at about 2 µm/px.
    assert (page.width_px, page.height_px) == (2220 // 4, 2967 // 4)
    assert page.um_per_px == pytest.approx(4 * 0.499)
    report = (tmp_path / "report.html").read_text()
    assert f"href='{page.page}'" in report


def test_interval_wording_says_whether_the_classifiers_error_is_included(tmp_path: Path) -> None:
    run = hand_made_run(tmp_path, "s", a_case("C5"), tmp_path / "s.svs")
    assert "<b>not the classifier's class-mix bias</b>" in report_html(run)
    run.confusion = [[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]
    text = report_html(run)
    assert "interval of the classifier's own error" in text and "not the classifier" not in text


def test_a_not_assessable_slide_without_tiles_still_shows_its_thumbnail_and_viewer(
    cmu_svs: Path, tmp_path: Path
) -> None:
    case = a_case("C6", status="not_assessable", reason="too little tumour", huvos_grade=None)
    run = hand_made_run(tmp_path, "cmu", case, cmu_svs)
    run.slides[0].status, run.slides[0].reason = "not_assessable", "too little tumour"
    thumbnail = small_tiles().thumbnail
    run.tiles["cmu"] = SlideTiles(
        np.zeros(0, np.int64), np.zeros(0, np.int64), 1024.0, np.zeros(0), np.zeros((0, 3)),
        TISSUE_CLASSES, np.zeros((0, 3)), thumbnail, 32.0,
    )  # fmt: skip
    viewers = write_report(run, tmp_path)
    assert isinstance(viewers["cmu"], ViewerPage)
    elements = Elements((tmp_path / "report.html").read_text())
    (class_map,) = elements.find("img", id="map-0")
    assert not np.asarray(decode_image(class_map["src"]).convert("RGBA"))[..., 3].any()
    assert "not assessable: too little tumour" in (tmp_path / "report.html").read_text()


def test_model_section_reads_the_card_only_when_its_weights_are_the_runs(tmp_path: Path) -> None:
    card = {
        "weights_sha256": "a" * 64,
        "cross_validation": {"accuracy": 0.81, "macro_f1": 0.8, "grouping": "patient"},
        "known_limits": ["<b>stated</b> by the card"],
    }
    (tmp_path / "model_card.json").write_text(json.dumps(card))
    same = model_section({"name": str(tmp_path), "weights_sha256": "a" * 64}, 1024.0)
    assert "tile accuracy <b>0.81</b>" in same and "grouped by patient" in same
    assert "<li>&lt;b&gt;stated&lt;/b&gt; by the card</li>" in same
    other = model_section(
        {"name": str(tmp_path), "weights_sha256": "b" * 64, "cv_accuracy": 0.7}, None
    )
    assert "tile accuracy <b>0.70</b>" in other and "stated" not in other
    assert "full model card was not found" in other
