"""Can this slide / case be graded at all? Guards against input the model was never made for.

Three checks, each stated with what it does and does not catch (docs/necrosis.md):

- :func:`check_stain` (per slide, on the thumbnail): bright-field H&E or not. A dark thumbnail
  (median brightness under :data:`MIN_BRIGHTNESS`) is fluorescence or dark field; tissue
  whose optical density does not peak in the green channel (haematoxylin and eosin both
  absorb green most), or whose pixels are mostly not purple-to-pink, is another stain (IHC
  with DAB brown, trichrome blue/green, ...). It does not tell H&E of bone tumour from H&E of
  anything else.
- a minimum tumour area per case (:data:`MIN_TUMOUR_MM2`, viable + necrotic): below it a case
  rests on a handful of tiles (see :func:`too_little_tumour`).
- a minimum share of *recognised* tissue per case: tissue in tiles whose top class
  probability reaches :data:`CONFIDENT_PROBABILITY` (:func:`recognised_share`). It catches
  tissue that the model finds unlike all three of its classes only as far as the model's
  probabilities are honest there; a model can be confidently wrong on unfamiliar tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osteomics.wsi.stain import optical_density

#: Median brightness (0..1) of the whole thumbnail below which it is not bright field
#: (the fluorescence slide here: 0.02; the darkest of the 867 real TCIA H&E tiles, all tissue
#: and no glass: 0.32).
MIN_BRIGHTNESS = 0.2
#: Share of tissue pixels that must be purple to pink (H&E hues) for an H&E verdict.
MIN_HE_HUE_SHARE = 0.5
#: Hue range of haematoxylin and eosin, degrees: purple (250) round to orange-pink (25).
HE_HUE_DEGREES = (250.0, 25.0)
#: Tissue pixels needed for a colour verdict.
MIN_TISSUE_PIXELS = 200
#: Default minimum tumour area per case, mm² (viable + necrotic).
MIN_TUMOUR_MM2 = 3.0
#: Top class probability from which a tile counts as recognised.
CONFIDENT_PROBABILITY = 0.6

HE = "H&E"
NOT_HE = "not H&E"


@dataclass(frozen=True)
class StainCheck:
    """Verdict of :func:`check_stain` with the figures behind it.

    Attributes
    ----------
    stain:
        :data:`HE` or :data:`NOT_HE`.
    reason:
        Empty for H&E; otherwise why not (for the slide row and report).
    brightness:
        Median brightness of the thumbnail, 0..1.
    he_hue_share:
        Share of tissue pixels with an H&E hue (None without enough tissue).
    od_rgb:
        Mean optical density of tissue pixels per channel (None without enough tissue).
    """

    stain: str
    reason: str
    brightness: float
    he_hue_share: float | None
    od_rgb: tuple[float, float, float] | None

    @property
    def is_he(self) -> bool:
        return self.stain == HE


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees (0..360) of (n, 3) uint8 RGB pixels."""
    x = rgb.astype(np.float64) / 255.0
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    mx, mn = x.max(axis=1), x.min(axis=1)
    delta = np.where(mx - mn > 0, mx - mn, 1.0)
    other = np.where(mx == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0)
    hue = np.where(mx == r, ((g - b) / delta) % 6.0, other)
    return np.where(mx - mn > 0, hue * 60.0, 0.0)


def check_stain(thumbnail: np.ndarray, tissue_mask: np.ndarray) -> StainCheck:
    """Is this thumbnail a bright-field H&E stain?

    Parameters
    ----------
    thumbnail:
        RGB uint8 (height, width, 3).
    tissue_mask:
        bool (height, width), True on tissue (:func:`osteomics.wsi.tissue.detect_tissue`).

    Returns
    -------
    StainCheck
    """
    rgb = np.asarray(thumbnail)[..., :3]
    brightness = float(np.median(rgb.astype(np.float64).mean(axis=-1))) / 255.0
    if brightness < MIN_BRIGHTNESS:
        return StainCheck(
            NOT_HE,
            f"not an H&E stain: the slide is dark (median brightness {brightness:.2f}, "
            f"bright-field H&E is above {MIN_BRIGHTNESS}): fluorescence or dark field",
            brightness,
            None,
            None,
        )
    tissue = rgb[np.asarray(tissue_mask, dtype=bool)]
    if tissue.shape[0] < MIN_TISSUE_PIXELS:
        return StainCheck(HE, "", brightness, None, None)  # nothing to judge; the area guard acts
    hue = _hue_degrees(tissue)
    low, high = HE_HUE_DEGREES
    share = float(((hue >= low) | (hue <= high)).mean())
    od = optical_density(tissue).mean(axis=0)
    od_rgb = (float(od[0]), float(od[1]), float(od[2]))
    if share < MIN_HE_HUE_SHARE:
        return StainCheck(
            NOT_HE,
            f"not an H&E stain: only {share:.0%} of the tissue is purple to pink "
            f"(H&E: at least {MIN_HE_HUE_SHARE:.0%})",
            brightness,
            share,
            od_rgb,
        )
    if not od[1] >= max(od[0], od[2]):
        return StainCheck(
            NOT_HE,
            "not an H&E stain: the tissue absorbs most in the "
            f"{'red' if od[0] > od[2] else 'blue'} channel, not green as H&E does",
            brightness,
            share,
            od_rgb,
        )
    return StainCheck(HE, "", brightness, share, od_rgb)


def too_little_tumour(tumour_mm2: float, min_tumour_mm2: float = MIN_TUMOUR_MM2) -> str:
    """Reason a case with ``tumour_mm2`` of viable + necrotic tumour is not assessable, or
    an empty string when it has enough."""
    if tumour_mm2 >= min_tumour_mm2:
        return ""
    return (
        f"not assessable: too little tumour ({tumour_mm2:.2f} mm² viable + necrotic; "
        f"a grade needs at least {min_tumour_mm2:g} mm²)"
    )


def recognised_share(
    probabilities: np.ndarray,
    tissue_mm2: np.ndarray,
    confident_probability: float = CONFIDENT_PROBABILITY,
) -> tuple[float, float]:
    """Recognised tissue: area in tiles whose top class probability reaches
    ``confident_probability``.

    Parameters
    ----------
    probabilities:
        (n_tiles, n_classes) calibrated class probabilities.
    tissue_mm2:
        (n_tiles,) tissue area of each tile.

    Returns
    -------
    (recognised_mm2, total_mm2)
    """
    p = np.asarray(probabilities, dtype=np.float64)
    area = np.asarray(tissue_mm2, dtype=np.float64)
    if p.shape[0] == 0:
        return 0.0, 0.0
    confident = p.max(axis=1) >= confident_probability
    return float(area[confident].sum()), float(area.sum())
