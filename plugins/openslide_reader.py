"""Slide reader backed by OpenSlide (the ``openslide-bin`` wheel bundles the C library)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from osteomics.plugins import Plugin
from osteomics.wsi.slide import RawSlideMetadata, Slide
from osteomics.wsi.sources import SlideSource


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
    ) -> Image.Image:
        return self._osr.read_region(location_px, level, size_px)

    def _read_associated(self, name: str) -> Image.Image:
        return self._osr.associated_images[name]

    def close(self) -> None:
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()


plugin = Plugin(
    name="openslide",
    kind="slide_reader",
    description="OpenSlide: SVS, NDPI, MRXS, SCN, BIF, Philips TIFF, generic tiled TIFF, DICOM WSI",
    factory=OpenSlideSlide,
    priority=10,
)
