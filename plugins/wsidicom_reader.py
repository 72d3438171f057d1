"""Slide reader backed by wsidicom (DICOM VL Whole Slide Microscopy Image instances)."""

from __future__ import annotations

from typing import Any

import numpy as np

from osteomics.core.plugins import Plugin
from osteomics.wsi.slide import RawSlideMetadata, Slide
from osteomics.wsi.sources import SlideSource


class WsiDicomSlide(Slide):
    """DICOM WSI: a folder (or list) of instances, one per pyramid level; or a series on a
    DICOMweb server (a :class:`SlideSource` with ``remote``), read tile by tile."""

    backend = "wsidicom"

    @classmethod
    def can_open(cls, source: SlideSource) -> bool:
        if source.remote is not None:  # a DICOM WSI series on a DICOMweb server
            return True
        path = source.files[0]
        if not path.is_file():
            return False
        with open(path, "rb") as fh:
            head = fh.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"

    def _open(self) -> None:
        if self.source.remote is not None:
            self._wsi: Any = self.source.remote.open()  # read frame by frame over WADO-RS
            return
        from wsidicom import WsiDicom

        self._wsi = WsiDicom.open([str(f) for f in self.source.files])

    def _read_metadata(self) -> RawSlideMetadata:
        levels = list(self._wsi.levels)
        base_w = levels[0].size.width
        dims = tuple((lv.size.width, lv.size.height) for lv in levels)
        downsamples = tuple(base_w / lv.size.width for lv in levels)
        mpp = self._wsi.mpp
        objective = None
        try:
            objective = float(self._wsi.metadata.optical_paths[0].objective.objective_power)
        except Exception:
            objective = None
        associated = []
        if self._wsi.labels:
            associated.append("label")
        if self._wsi.overviews:
            associated.append("macro")
        return RawSlideMetadata(
            vendor="dicom",
            level_dimensions=dims,
            level_downsamples=downsamples,
            mpp_x=float(mpp.width) if mpp is not None else None,
            mpp_y=float(mpp.height) if mpp is not None else None,
            objective_power=objective,
            associated_images=tuple(associated),
            properties={},
        )

    def _read_region_raw(
        self, location_px: tuple[int, int], level: int, size_px: tuple[int, int]
    ) -> np.ndarray:
        lv = self._wsi.levels[level]
        downsample = self.info.levels[level].downsample
        x, y = (round(c / downsample) for c in location_px)
        # wsidicom addresses levels by their scale (log2 of the downsample) and takes the
        # location in that level's pixels.
        return np.asarray(self._wsi.read_region((x, y), lv.level, size_px, as_array=True))

    def _read_associated(self, name: str) -> np.ndarray:
        image = self._wsi.read_label() if name == "label" else self._wsi.read_overview()
        return np.asarray(image.convert("RGB"))

    def close(self) -> None:
        wsi = getattr(self, "_wsi", None)
        if wsi is not None:
            wsi.close()


plugin = Plugin(
    name="wsidicom",
    kind="slide_reader",
    description="wsidicom: DICOM VL Whole Slide Microscopy Image (folder of instances)",
    factory=WsiDicomSlide,
    priority=30,
    requires=("wsidicom",),
)
