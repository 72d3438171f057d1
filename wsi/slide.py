"""The one slide interface every reader plugin implements, and ``open_slide`` to pick a reader.

Coordinates follow OpenSlide: ``location_px`` is the top-left corner in level-0 pixels,
``size_px`` is (width, height) at the level being read. Pixels come back as ``uint8`` arrays of
shape (height, width, 3), RGB; transparent pixels (outside a sparse scan) become white.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from osteomics.wsi.errors import (
    MissingMppError,
    NotASlideError,
    ResolutionError,
    SlideNotFoundError,
    SlideReadError,
    UnknownBackendError,
    WsiError,
)
from osteomics.wsi.sources import SlideSource, source_for_path

log = logging.getLogger(__name__)

#: A µm/px outside this range is not a microscope resolution (a TIFF written with the
#: default 72 dpi reports 352.8 µm/px); it is treated as missing.
PLAUSIBLE_MPP_RANGE = (0.01, 100.0)


@dataclass(frozen=True)
class SlideLevel:
    """One pyramid level."""

    index: int
    width_px: int
    height_px: int
    downsample: float
    """Level-0 pixels per pixel of this level."""
    mpp: float | None
    """µm per pixel at this level (None when the slide does not say)."""


@dataclass(frozen=True)
class SlideInfo:
    """What a pathologist (or ``osteomics info``) wants to know about a slide."""

    path: str
    backend: str
    vendor: str | None
    levels: tuple[SlideLevel, ...]
    mpp_x: float | None
    """µm/px at level 0 along x."""
    mpp_y: float | None
    mpp_source: str
    """``metadata``, ``override`` or ``missing``; when missing, ``mpp_note`` says why."""
    objective_power: float | None
    associated_images: tuple[str, ...]
    mpp_note: str = ""
    properties: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def mpp(self) -> float | None:
        """Level-0 µm/px (x); the unit every resolution decision uses."""
        return self.mpp_x

    @property
    def width_px(self) -> int:
        return self.levels[0].width_px

    @property
    def height_px(self) -> int:
        return self.levels[0].height_px

    def require_mpp(self) -> float:
        """Return level-0 µm/px or raise :class:`MissingMppError` saying how to fix it."""
        if self.mpp_x is None:
            raise MissingMppError(
                f"{self.path}: the slide does not record its resolution (µm per pixel)"
                f"{'; ' + self.mpp_note if self.mpp_note else ''}. "
                "Pass --mpp-override X with the scanner's µm/px (about 0.25 at 40x, 0.5 at 20x)."
            )
        return self.mpp_x

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (``osteomics info --json``)."""
        return {
            "path": self.path,
            "backend": self.backend,
            "vendor": self.vendor,
            "width_px": self.width_px,
            "height_px": self.height_px,
            "mpp_x": self.mpp_x,
            "mpp_y": self.mpp_y,
            "mpp_source": self.mpp_source,
            "mpp_note": self.mpp_note or None,
            "objective_power": self.objective_power,
            "level_count": len(self.levels),
            "levels": [
                {
                    "index": lv.index,
                    "width_px": lv.width_px,
                    "height_px": lv.height_px,
                    "downsample": lv.downsample,
                    "mpp": lv.mpp,
                }
                for lv in self.levels
            ],
            "associated_images": list(self.associated_images),
        }


@dataclass(frozen=True)
class RawSlideMetadata:
    """What a reader plugin reports; :class:`Slide` turns it into a :class:`SlideInfo`."""

    vendor: str | None
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None
    associated_images: tuple[str, ...]
    properties: dict[str, str]


#: Side, in pixels of the level read, of the blocks :meth:`Slide.read_tiles` reads at once
#: (about 20 MB of RGBA per block).
BLOCK_READ_PX = 2048


#: A block is read as one region only when its tiles cover at least this share of it.
MIN_BLOCK_COVER = 0.5


class Slide(ABC):
    """A whole-slide image opened by one reader backend.

    Subclasses (reader plugins) implement :meth:`can_open`, :meth:`_open`,
    :meth:`_read_metadata`, :meth:`_read_region_rgba_or_rgb`, :meth:`_read_associated` and
    :meth:`close`. Everything else (mpp checks, RGB conversion, thumbnails) lives here, once.
    """

    backend: ClassVar[str]

    def __init__(self, source: SlideSource, mpp_override: float | None = None) -> None:
        self.source = source
        try:
            self._open()
            raw = self._read_metadata()
            self._info = _make_info(source, self.backend, raw, mpp_override)
        except Exception as exc:
            self.close()  # do not keep the file open for as long as the error is kept
            if isinstance(exc, WsiError):
                raise
            raise NotASlideError(
                f"{source.path}: {self.backend} cannot open it ({_short(exc)}). "
                "Check that it is a whole-slide image; try another --backend."
            ) from exc

    # -- reader plugins implement these -------------------------------------------------
    @classmethod
    @abstractmethod
    def can_open(cls, source: SlideSource) -> bool:
        """Cheap check (header sniff) whether this reader can open the source."""

    @abstractmethod
    def _open(self) -> None: ...

    @abstractmethod
    def _read_metadata(self) -> RawSlideMetadata: ...

    @abstractmethod
    def _read_region_raw(
        self, location_px: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> np.ndarray | Image.Image:
        """Return the region as the backend gives it: an RGB(A) PIL image or uint8 array."""

    @abstractmethod
    def _read_associated(self, name: str) -> np.ndarray | Image.Image: ...

    @abstractmethod
    def close(self) -> None: ...

    def stored_tile_px(self, level: int) -> tuple[int, int] | None:
        """(width, height) of the tiles the file stores at ``level``, if the reader knows.

        Block reads (:meth:`read_tiles`) align their regions to these tiles, so each stored
        tile is decoded once per block. Readers that do not know return None.
        """
        return None

    def reads_blocks_faster(self, level: int) -> bool:
        """Whether one region covering many tiles reads faster than one region per tile.

        True where the reader decodes stored tiles per call without a cache (tiffslide) or
        decodes them directly (OpenSlide's reader for tiled JPEG TIFFs); OpenSlide itself
        caches decoded tiles and reads a large region no faster per pixel, so False there.
        """
        return False

    # -- the interface everyone else uses ---------------------------------------------
    @property
    def info(self) -> SlideInfo:
        return self._info

    @property
    def path(self) -> Path:
        return self.source.path

    def read_region(
        self, location_px: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> np.ndarray:
        """Read an RGB region.

        Parameters
        ----------
        location_px:
            (x, y) of the top-left corner in level-0 pixels.
        level:
            Pyramid level index (0 is the finest).
        size_px:
            (width, height) in pixels of ``level``.

        Returns
        -------
        numpy.ndarray
            uint8, shape (height, width, 3).

        Raises
        ------
        SlideReadError
            The pixel data could not be decoded (corrupt tile data).
        """
        try:
            region = self._read_region_raw(location_px, level, size_px)
        except Exception as exc:
            raise SlideReadError(
                f"{self.path}: cannot decode pixel data at level {level}, "
                f"x={location_px[0]}, y={location_px[1]} ({_short(exc)}). "
                "The file is damaged or truncated: re-export or re-scan the slide."
            ) from exc
        return rgba_to_rgb(region)

    def read_tiles(
        self, x_px: np.ndarray, y_px: np.ndarray, level: int, size_px: int
    ) -> np.ndarray:
        """Read square tiles by reading the regions that cover several of them at once.

        Where the reader gains from it (:meth:`reads_blocks_faster`), the tiles (level-0
        corners ``x_px``, ``y_px``; ``size_px`` pixels of ``level``) are grouped into blocks of
        about :data:`BLOCK_READ_PX` pixels of ``level``; each block whose tiles cover at least
        :data:`MIN_BLOCK_COVER` of it is read with one :meth:`read_region`, widened to the
        stored tile grid (so a stored tile is decoded once per block, not once per tile that
        touches it), and the tiles are cut out of it. The pixels are those of one
        :meth:`read_region` per tile: otherwise (and at a level whose downsample is not a whole
        number, or where a corner does not fall on a whole pixel of the level) tiles are read
        one by one, as the reader rounds them.

        Returns
        -------
        numpy.ndarray
            uint8, shape (n, size_px, size_px, 3), in the order of ``x_px``.
        """
        x_px = np.asarray(x_px, dtype=np.int64)
        y_px = np.asarray(y_px, dtype=np.int64)
        out = np.empty((len(x_px), size_px, size_px, 3), dtype=np.uint8)
        if len(x_px) == 0:
            return out
        lv = self.info.levels[level]
        x_level = x_px / lv.downsample
        y_level = y_px / lv.downsample
        on_pixels = np.array_equal(x_level, np.round(x_level)) and np.array_equal(
            y_level, np.round(y_level)
        )
        if (
            lv.downsample != round(lv.downsample)
            or not on_pixels
            or not self.reads_blocks_faster(level)
        ):
            for i, (x, y) in enumerate(zip(x_px.tolist(), y_px.tolist(), strict=True)):
                out[i] = self.read_region((x, y), level, (size_px, size_px))
            return out
        xl = np.round(x_level).astype(np.int64)
        yl = np.round(y_level).astype(np.int64)
        stored_w, stored_h = self.stored_tile_px(level) or (1, 1)
        span_x = max(stored_w, BLOCK_READ_PX // stored_w * stored_w)
        span_y = max(stored_h, BLOCK_READ_PX // stored_h * stored_h)
        blocks: dict[tuple[int, int], list[int]] = {}
        for i, key in enumerate(zip((xl // span_x).tolist(), (yl // span_y).tolist(), strict=True)):
            blocks.setdefault(key, []).append(i)
        for members in blocks.values():
            idx = np.asarray(members)
            x0 = int(xl[idx].min()) // stored_w * stored_w
            y0 = int(yl[idx].min()) // stored_h * stored_h
            x1 = min(-(-int(xl[idx].max() + size_px) // stored_w) * stored_w, lv.width_px)
            y1 = min(-(-int(yl[idx].max() + size_px) // stored_h) * stored_h, lv.height_px)
            x1 = max(x1, int(xl[idx].max()) + size_px)  # a tile is never cut by the clip
            y1 = max(y1, int(yl[idx].max()) + size_px)
            if len(members) * size_px * size_px < MIN_BLOCK_COVER * (x1 - x0) * (y1 - y0):
                for i in members:  # sparse tiles (tissue edges): do not read the glass between
                    out[i] = self.read_region(
                        (int(x_px[i]), int(y_px[i])), level, (size_px, size_px)
                    )
                continue
            region = self.read_region(
                (round(x0 * lv.downsample), round(y0 * lv.downsample)), level, (x1 - x0, y1 - y0)
            )
            for i in members:
                dx, dy = int(xl[i]) - x0, int(yl[i]) - y0
                out[i] = region[dy : dy + size_px, dx : dx + size_px]
        return out

    def associated_image(self, name: str) -> np.ndarray:
        """Read an associated image (label, macro, thumbnail) as RGB uint8."""
        if name not in self.info.associated_images:
            raise KeyError(
                f"{self.path} has no associated image {name!r}; "
                f"it has: {', '.join(self.info.associated_images) or 'none'}"
            )
        return rgba_to_rgb(self._read_associated(name))

    def read_thumbnail(self, max_side_px: int = 2048) -> tuple[np.ndarray, float]:
        """Read a downsampled view of the whole slide by exact block averaging.

        Picks the coarsest level whose longer side is still at least ``max_side_px``, then
        averages blocks of ``f x f`` pixels (f an integer, Pillow's ``reduce``) in strips, so
        memory is bounded and the result is the same whatever backend reads the slide.

        Returns
        -------
        thumbnail, downsample:
            RGB uint8 array, and level-0 pixels per thumbnail pixel.
        """
        levels = self.info.levels
        chosen = levels[0]
        for lv in levels:
            if max(lv.width_px, lv.height_px) >= max_side_px:
                chosen = lv
        factor = max(1, -(-max(chosen.width_px, chosen.height_px) // max_side_px))
        out_w, out_h = chosen.width_px // factor, chosen.height_px // factor
        thumb = np.empty((out_h, out_w, 3), dtype=np.uint8)
        rows_per_strip = max(1, 4096 // factor)
        for row0 in range(0, out_h, rows_per_strip):
            rows = min(rows_per_strip, out_h - row0)
            y0_level = row0 * factor
            strip = self.read_region(
                (0, round(y0_level * chosen.downsample)),
                chosen.index,
                (out_w * factor, rows * factor),
            )
            if factor > 1:
                strip = np.asarray(Image.fromarray(strip).reduce(factor))
            thumb[row0 : row0 + rows] = strip
        return thumb, chosen.downsample * factor

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def rgba_to_rgb(region: np.ndarray | Image.Image) -> np.ndarray:
    """RGB uint8 array; fully transparent pixels (no scan data) become white.

    PIL images take a fast path: an opaque RGBA image (the usual case) converts in C.
    """
    if isinstance(region, Image.Image):
        if region.mode == "RGB":
            return np.asarray(region)
        if region.mode == "RGBA" and region.getchannel("A").getextrema()[0] == 255:
            return np.asarray(region.convert("RGB"))
        region = np.asarray(region.convert("RGBA"))
    if region.ndim != 3 or region.shape[2] not in (3, 4):
        raise ValueError(f"expected (h, w, 3|4) pixels, got shape {region.shape}")
    if region.shape[2] == 3:
        return np.ascontiguousarray(region)
    rgb = np.ascontiguousarray(region[..., :3])
    transparent = region[..., 3] == 0
    if transparent.any():
        rgb[transparent] = 255
    return rgb


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _plausible_mpp(value: float | None) -> bool:
    return value is not None and PLAUSIBLE_MPP_RANGE[0] <= value <= PLAUSIBLE_MPP_RANGE[1]


def _make_info(
    source: SlideSource, backend: str, raw: RawSlideMetadata, mpp_override: float | None
) -> SlideInfo:
    mpp_x, mpp_y, note = raw.mpp_x, raw.mpp_y, ""
    if mpp_x is not None and not _plausible_mpp(mpp_x):
        note = (
            f"the file's resolution tags say {mpp_x:.4g} µm/px, which is not a microscope "
            "resolution (a default 72 dpi?)"
        )
        mpp_x = mpp_y = None
    if mpp_y is None or not _plausible_mpp(mpp_y):
        mpp_y = mpp_x
    source_kind = "metadata" if mpp_x is not None else "missing"
    if mpp_override is not None:
        if not _plausible_mpp(mpp_override):
            raise ResolutionError(
                f"{source.path}: --mpp-override {mpp_override} µm/px is not a microscope "
                f"resolution; give a value between {PLAUSIBLE_MPP_RANGE[0]} and "
                f"{PLAUSIBLE_MPP_RANGE[1]}"
            )
        if mpp_x is not None:
            log.info(
                "%s: mpp %.4f from metadata overridden by %.4f", source.name, mpp_x, mpp_override
            )
        mpp_x = mpp_y = float(mpp_override)
        source_kind = "override"
    levels = tuple(
        SlideLevel(
            index=i,
            width_px=int(w),
            height_px=int(h),
            downsample=float(ds),
            mpp=None if mpp_x is None else mpp_x * float(ds),
        )
        for i, ((w, h), ds) in enumerate(
            zip(raw.level_dimensions, raw.level_downsamples, strict=True)
        )
    )
    if not levels or levels[0].width_px <= 0 or levels[0].height_px <= 0:
        raise NotASlideError(f"{source.path}: the {backend} reader found no image levels")
    return SlideInfo(
        path=str(source.path),
        backend=backend,
        vendor=raw.vendor,
        levels=levels,
        mpp_x=mpp_x,
        mpp_y=mpp_y,
        mpp_source=source_kind,
        mpp_note=note,
        objective_power=raw.objective_power,
        associated_images=raw.associated_images,
        properties=raw.properties,
    )


def reader_classes() -> dict[str, type[Slide]]:
    """Installed slide readers by name, in the order ``auto`` tries them."""
    from osteomics.core.plugins import discover_plugins

    plugins, _failures = discover_plugins("slide_reader")
    readers = {p.name: p.factory for p in plugins}
    if not readers:
        raise UnknownBackendError(
            "no slide reader plugins are registered: osteomics is not installed as a package. "
            "Run `pip install -e .` in the osteomics checkout."
        )
    return readers


#: The reader ``auto`` tries first for a DICOM WSI series: wsidicom decodes its frames
#: 2.5x faster than OpenSlide 4.0 does (bench/pacs.py: 984 vs 383 tiles/s on the same mosaic),
#: so a slide from the node's store scores faster than the same pixels as a TIFF.
DICOM_FIRST_READER = "wsidicom"


def _auto_order(
    readers: dict[str, type[Slide]], source: SlideSource
) -> list[tuple[str, type[Slide]]]:
    """Readers in the order ``auto`` tries them: by plugin priority, except that a DICOM
    series goes to :data:`DICOM_FIRST_READER` first when it is installed."""
    order = list(readers.items())
    if source.is_dicom and DICOM_FIRST_READER in readers:
        order.sort(key=lambda item: item[0] != DICOM_FIRST_READER)
    return order


def open_slide(
    path: str | Path | SlideSource,
    backend: str = "auto",
    mpp_override: float | None = None,
) -> Slide:
    """Open a whole-slide image with the named reader, or the first that can (``auto``).

    Parameters
    ----------
    path:
        A slide file, a folder holding one DICOM WSI series, or a :class:`SlideSource`.
    backend:
        ``auto`` or the name of an installed reader plugin (``openslide``, ``tiffslide``,
        ``wsidicom``).
    mpp_override:
        µm/px at level 0 to use instead of (or in the absence of) the file's own.

    Raises
    ------
    SlideNotFoundError, NotASlideError, UnknownBackendError, MissingMppError
    """
    source = path if isinstance(path, SlideSource) else source_for_path(Path(path))
    if source.remote is None and not source.path.exists():
        raise SlideNotFoundError(f"{source.path}: no such file or folder")
    if source.remote is not None and backend == "auto":
        backend = "wsidicom"  # a remote slide is a DICOM WSI series on a DICOMweb server
    readers = reader_classes()
    if backend != "auto":
        if backend not in readers:
            raise UnknownBackendError(
                f"unknown slide reader {backend!r}; installed: {', '.join(readers)} (or auto)"
            )
        return readers[backend](source, mpp_override)
    reasons = []
    for name, cls in _auto_order(readers, source):
        try:
            if not cls.can_open(source):
                reasons.append(f"{name}: format not recognised")
                continue
            return cls(source, mpp_override)
        except NotASlideError as exc:
            reasons.append(f"{name}: {(exc.__cause__ and _short(exc.__cause__)) or exc}")
    raise NotASlideError(
        f"{source.path}: no slide reader can open it ({'; '.join(reasons)}). "
        "Check that it is a whole-slide image (SVS, NDPI, MRXS, SCN, tiled TIFF, DICOM WSI)."
    )
