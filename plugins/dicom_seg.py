"""Exporter: the tissue-class map of a scored DICOM slide as a DICOM Segmentation (highdicom).

One BINARY segment per tissue class (1 viable tumour, 2 necrotic tumour, 3 non-tumour, in the
order of :data:`osteomics.wsi.necrosis.TISSUE_CLASSES`), each pixel of a scored tile set in the
segment of the tile's most probable class (the class the heatmap and the QuPath export show);
unscored pixels (glass, too little tissue) are in no segment. The SEG is tiled (TILED_SPARSE,
frames the size of the source's, empty frames omitted) on the total pixel matrix of one image
of the slide's pyramid, in the slide's frame of reference, so a DICOM viewer overlays it:

- by default the coarsest pyramid level on which a model tile still spans at least
  :data:`MIN_TILE_PX` pixels (a tile map has no detail finer than a tile; level 0 of a 40x
  slide would make a SEG of billions of pixels for a few thousand tiles),
- ``level=0`` forces the full-resolution image.

Segment property codes (SNOMED CT): viable tumour ``108369006`` Neoplasm, necrotic tumour
``6574001`` Necrosis (category ``49755003`` Morphologically abnormal structure), non-tumour
``85756007`` Tissue (category Tissue).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pandas as pd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import VLWholeSlideMicroscopyImageStorage

from osteomics import __version__
from osteomics.plugins.dicom_sr import (
    MANUFACTURER,
    ModelIdentity,
    conform_copied_values,
    derived_uid,
)
from osteomics.plugins.errors import DicomExportError
from osteomics.wsi.necrosis import CLASS_STYLE, NECROTIC, NON_TUMOUR, TISSUE_CLASSES, VIABLE

#: A level is fine enough for the map when one model tile spans at least this many pixels.
MIN_TILE_PX = 8

_PROPERTIES = {
    VIABLE: (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm),
    NECROTIC: (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Necrosis),
    NON_TUMOUR: (codes.SCT.Tissue, codes.SCT.Tissue),
}


@dataclass(frozen=True)
class PyramidLevel:
    """One VOLUME image of a slide's pyramid: its dataset (header) and downsample from
    level 0 (level-0 pixel size / this level's)."""

    dataset: Dataset
    downsample: float

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.dataset.TotalPixelMatrixRows), int(self.dataset.TotalPixelMatrixColumns)


def pyramid_levels(datasets: Sequence[Dataset]) -> list[PyramidLevel]:
    """The VOLUME images of one slide (VL Whole Slide Microscopy, first optical path), finest
    first.

    Raises
    ------
    DicomExportError
        No VOLUME image among ``datasets``.
    """
    volumes = [
        d
        for d in datasets
        if str(d.get("SOPClassUID", "")) == VLWholeSlideMicroscopyImageStorage
        and len(d.get("ImageType", [])) > 2
        and str(d.ImageType[2]) == "VOLUME"
    ]
    if not volumes:
        raise DicomExportError(
            "no VOLUME image (VL Whole Slide Microscopy) among the slide's instances: a SEG "
            "needs the slide's pyramid"
        )
    volumes.sort(key=lambda d: -int(d.TotalPixelMatrixColumns))
    width0 = int(volumes[0].TotalPixelMatrixColumns)
    seen: set[int] = set()
    levels = []
    for d in volumes:
        cols = int(d.TotalPixelMatrixColumns)
        if cols in seen:  # another optical path or focal plane of a level: keep the first
            continue
        seen.add(cols)
        levels.append(PyramidLevel(d, width0 / cols))
    return levels


def choose_level(levels: Sequence[PyramidLevel], side_px: float, level: int | None) -> PyramidLevel:
    """The level the SEG is made on: ``level`` if given, else the coarsest one on which a
    tile (``side_px`` level-0 pixels) spans at least :data:`MIN_TILE_PX` pixels."""
    if level is not None:
        if not 0 <= level < len(levels):
            raise DicomExportError(
                f"pyramid level {level} does not exist (the slide has {len(levels)}: 0-"
                f"{len(levels) - 1})"
            )
        return levels[level]
    fine_enough = [lv for lv in levels if side_px / lv.downsample >= MIN_TILE_PX]
    return fine_enough[-1] if fine_enough else levels[0]


def class_map(tiles: pd.DataFrame, shape: tuple[int, int], downsample: float = 1.0) -> np.ndarray:
    """Label map (rows, cols) uint8: 0 unscored, ``k + 1`` for the most probable class
    ``TISSUE_CLASSES[k]`` of the tile covering the pixel.

    Parameters
    ----------
    tiles:
        A ``tiles.parquet`` table: ``x_px``, ``y_px``, ``side_px`` (level-0 pixels) and one
        ``p_<class>`` column per tissue class.
    shape:
        Rows and columns of the image the map is on.
    downsample:
        Level-0 pixels per pixel of that image.
    """
    missing = [f"p_{c}" for c in TISSUE_CLASSES if f"p_{c}" not in tiles.columns]
    if missing:
        raise DicomExportError(f"the tile table lacks the columns {', '.join(missing)}")
    probabilities = tiles[[f"p_{c}" for c in TISSUE_CLASSES]].to_numpy(dtype=np.float64)
    winners = probabilities.argmax(axis=1).astype(np.uint8) + 1
    out = np.zeros(shape, dtype=np.uint8)
    rows, cols = shape
    for x, y, side, label in zip(
        tiles["x_px"].to_numpy(),
        tiles["y_px"].to_numpy(),
        tiles["side_px"].to_numpy(),
        winners,
        strict=True,
    ):
        c0, r0 = round(x / downsample), round(y / downsample)
        c1, r1 = round((x + side) / downsample), round((y + side) / downsample)
        out[max(r0, 0) : min(r1, rows), max(c0, 0) : min(c1, cols)] = label
    return out


def segment_descriptions(model: ModelIdentity) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name[:64] or "unnamed model",
        family=codes.cid7162.ArtificialIntelligence,
        version=model.weights_sha256[:64] or "unknown",
        source=MANUFACTURER,
        parameters={"weights_sha256": model.weights_sha256, "osteomics": __version__},
    )
    out = []
    for number, name in enumerate(TISSUE_CLASSES, start=1):
        category, kind = _PROPERTIES[name]
        label, rgb = CLASS_STYLE[name]
        out.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=derived_uid("segment", model.weights_sha256, name),
                tracking_id=f"osteomics {name}",
                display_color=hd.color.CIELabColor.from_rgb(*rgb),
            )
        )
    return out


def necrosis_segmentation(
    source: Dataset,
    labels: np.ndarray,
    model: ModelIdentity,
    *,
    slide: str,
    instance_uid: str | None = None,
    series_uid: str | None = None,
) -> hd.seg.Segmentation:
    """The SEG of one slide's class map ``labels`` (on ``source``'s total pixel matrix).

    Raises
    ------
    DicomExportError
        ``labels`` does not match the source's total pixel matrix, or highdicom refuses it.
    """
    expected = (int(source.TotalPixelMatrixRows), int(source.TotalPixelMatrixColumns))
    if labels.shape != expected:
        raise DicomExportError(
            f"slide {slide}: class map {labels.shape} does not match the source image's total "
            f"pixel matrix {expected}"
        )
    key = (str(source.SOPInstanceUID), model.weights_sha256, slide)
    try:
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=labels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=segment_descriptions(model),
            series_instance_uid=series_uid or derived_uid("seg series", *key),
            series_number=901,
            sop_instance_uid=instance_uid or derived_uid("seg instance", *key),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=f"osteomics {model.name}"[:64],
            software_versions=__version__,
            device_serial_number="none",
            content_label="NECROSIS",
            content_description=f"osteomics tissue classes {slide}"[:64],
            tile_pixel_array=True,
            tile_size=(int(source.Columns), int(source.Rows)),
            dimension_organization_type=hd.DimensionOrganizationTypeValues.TILED_SPARSE,
            omit_empty_frames=True,
            series_description=f"osteomics tissue classes {slide}"[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DicomExportError(
            f"slide {slide}: highdicom refused the segmentation ({exc})"
        ) from exc
    # General Image: Patient Orientation is Type 2C, needed when the image has no Image
    # Orientation (Patient) (a slide has Image Orientation (Slide)); dciodvfy reports its
    # absence as an error, so it is present and empty.
    seg.PatientOrientation = ""
    conform_copied_values(seg)
    return seg


def read_class_map(seg: Dataset) -> np.ndarray:
    """The label map of a SEG written by :func:`necrosis_segmentation` (its total pixel
    matrix, segment numbers as labels, 0 where no segment)."""
    parsed = hd.seg.Segmentation.from_dataset(seg)
    return np.asarray(parsed.get_total_pixel_matrix(combine_segments=True), dtype=np.uint8)
