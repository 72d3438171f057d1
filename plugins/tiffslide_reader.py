"""Slide reader backed by tiffslide (pure Python, tifffile + imagecodecs)."""

from __future__ import annotations

from typing import Any

import numpy as np

from osteomics.core.plugins import Plugin
from osteomics.wsi.slide import RawSlideMetadata, Slide
from osteomics.wsi.sources import SlideSource

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


class TiffSlideSlide(Slide):
    """Aperio SVS, Hamamatsu NDPI, Leica SCN, generic tiled TIFF (any TIFF-based format)."""

    backend = "tiffslide"

    @classmethod
    def can_open(cls, source: SlideSource) -> bool:
        path = source.files[0]
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC

    def _open(self) -> None:
        import tiffslide

        self._ts: Any = tiffslide.TiffSlide(str(self.source.files[0]))

    def _read_metadata(self) -> RawSlideMetadata:
        props = {k: str(v) for k, v in self._ts.properties.items() if v is not None}
        # Fail now, not at the first tile, when the TIFF's compression has no decoder.
        for page in self._ts.ts_tifffile.series[0].levels[:1]:
            compression = page.keyframe.compression
            if int(compression) not in _decodable_compressions():
                raise ValueError(f"unsupported TIFF compression {int(compression)}")
        return RawSlideMetadata(
            vendor=props.get("tiffslide.vendor"),
            level_dimensions=tuple(tuple(d) for d in self._ts.level_dimensions),
            level_downsamples=tuple(self._ts.level_downsamples),
            mpp_x=_float(props.get("tiffslide.mpp-x")),
            mpp_y=_float(props.get("tiffslide.mpp-y")),
            objective_power=_float(props.get("tiffslide.objective-power")),
            associated_images=tuple(sorted(self._ts.associated_images)),
            properties=props,
        )

    def _read_region_raw(
        self, location_px: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> np.ndarray:
        region = np.asarray(self._ts.read_region(location_px, level, size_px, as_array=True))
        # tiffslide pads reads beyond the image with black, without alpha; the Slide interface
        # (and OpenSlide) gives white there. tiffslide maps level-0 to level pixels with int().
        downsample = self._ts.level_downsamples[level]
        x0 = int(location_px[0] / downsample)
        y0 = int(location_px[1] / downsample)
        width, height = self._ts.level_dimensions[level]
        if x0 < 0 or y0 < 0 or x0 + size_px[0] > width or y0 + size_px[1] > height:
            region = region.copy()
            region[: max(0, -y0)] = 255
            region[max(0, height - y0) :] = 255
            region[:, : max(0, -x0)] = 255
            region[:, max(0, width - x0) :] = 255
        return region

    def reads_blocks_faster(self, level: int) -> bool:
        return True  # tiffslide decodes the stored tiles of every call afresh (no tile cache)

    def stored_tile_px(self, level: int) -> tuple[int, int] | None:
        props = self._ts.properties
        width = props.get(f"tiffslide.level[{level}].tile-width")
        height = props.get(f"tiffslide.level[{level}].tile-height")
        if not width or not height:
            return None
        return int(width), int(height)

    def _read_associated(self, name: str) -> np.ndarray:
        return np.asarray(self._ts.associated_images[name])

    def close(self) -> None:
        ts = getattr(self, "_ts", None)
        if ts is not None:
            ts.close()


def _decodable_compressions() -> set[int]:
    from tifffile import COMPRESSION

    return {int(c) for c in COMPRESSION}


plugin = Plugin(
    name="tiffslide",
    kind="slide_reader",
    description="tiffslide: TIFF-based slides (SVS, NDPI, SCN, generic tiled TIFF), pure Python",
    factory=TiffSlideSlide,
    priority=20,
    requires=("tiffslide",),
)
