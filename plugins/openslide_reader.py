"""Slide reader backed by OpenSlide (the ``openslide-bin`` wheel bundles the C library)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from osteomics.core.plugins import Plugin
from osteomics.plugins.tiff_tiles import DirectTileDecoder, direct_decoding_enabled
from osteomics.wsi.slide import RawSlideMetadata, Slide, rgba_to_rgb
from osteomics.wsi.sources import SlideSource

log = logging.getLogger(__name__)
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


class OpenSlideSlide(Slide):
    """Aperio, Hamamatsu, MIRAX, Leica, Philips, Ventana, generic tiled TIFF and DICOM WSI."""

    backend = "openslide"

    @classmethod
    def can_open(cls, source: SlideSource) -> bool:
        import openslide

        try:
            return openslide.OpenSlide.detect_format(str(source.files[0])) is not None
        except Exception:
            return False

    def _open(self) -> None:
        import openslide

        # For DICOM WSI, OpenSlide finds the other instances of the series next to this one.
        self._osr: Any = openslide.OpenSlide(str(self.source.files[0]))
        self._direct: DirectTileDecoder | None = None
        self._direct_failed: set[int] = set()  # levels whose direct decoding raised
        if direct_decoding_enabled() and _is_tiff(self.source.files[0]):
            try:
                self._direct = DirectTileDecoder(
                    self.source.files[0],
                    tuple((int(w), int(h)) for w, h in self._osr.level_dimensions),
                )
            except Exception as exc:  # the shortcut is optional; OpenSlide reads everything
                log.debug("no direct tile decoding for %s: %s", self.source.name, exc)

    def _read_metadata(self) -> RawSlideMetadata:
        props = dict(self._osr.properties)
        return RawSlideMetadata(
            vendor=props.get("openslide.vendor"),
            level_dimensions=tuple(tuple(d) for d in self._osr.level_dimensions),
            level_downsamples=tuple(self._osr.level_downsamples),
            mpp_x=_float(props.get("openslide.mpp-x")),
            mpp_y=_float(props.get("openslide.mpp-y")),
            objective_power=_float(props.get("openslide.objective-power")),
            associated_images=tuple(sorted(self._osr.associated_images)),
            properties=props,
        )

    def _read_region_raw(
        self, location_px: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> Image.Image | np.ndarray:
        if (
            self._direct is not None
            and level in self._direct.levels
            and level not in self._direct_failed
        ):
            downsample = self._osr.level_downsamples[level]
            x, y = round(location_px[0] / downsample), round(location_px[1] / downsample)
            if round(x * downsample) == location_px[0] and round(y * downsample) == location_px[1]:
                try:
                    pixels = self._direct.read(
                        (x, y),
                        level,
                        size_px,
                        reference=lambda: rgba_to_rgb(
                            self._osr.read_region(location_px, level, size_px)
                        ),
                    )
                except Exception as exc:  # the shortcut is optional; OpenSlide reads everything
                    # (NDPI levels look tiled to tifffile but do not decode tile by tile)
                    log.info(
                        "%s level %d: direct decoding failed (%s); OpenSlide reads it",
                        self.source.name,
                        level,
                        exc,
                    )
                    self._direct_failed.add(level)
                    pixels = None
                if pixels is not None:
                    return pixels
        return self._osr.read_region(location_px, level, size_px)

    def reads_blocks_faster(self, level: int) -> bool:
        # Only the direct decoder gains: OpenSlide caches decoded tiles itself.
        return (
            self._direct is not None
            and level in self._direct.levels
            and level not in self._direct_failed
        )

    def stored_tile_px(self, level: int) -> tuple[int, int] | None:
        props = self._osr.properties
        width = props.get(f"openslide.level[{level}].tile-width")
        height = props.get(f"openslide.level[{level}].tile-height")
        if not width or not height:
            return None
        return int(width), int(height)

    def _read_associated(self, name: str) -> Image.Image:
        return self._osr.associated_images[name]

    def close(self) -> None:
        direct = getattr(self, "_direct", None)
        if direct is not None:
            direct.close()
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()


plugin = Plugin(
    name="openslide",
    kind="slide_reader",
    description="OpenSlide: SVS, NDPI, MRXS, SCN, BIF, Philips TIFF, generic tiled TIFF, DICOM WSI",
    factory=OpenSlideSlide,
    priority=10,
    requires=("openslide",),
)
