"""Stain normalisation and stain perturbation of H&E tiles.

Two classic normalisers, small enough to read in one sitting:

- **Macenko** (Macenko et al., ISBI 2009): estimate the tile's two stain vectors in optical
  density (OD) space from the plane of its two largest eigenvectors, express each pixel as
  haematoxylin and eosin concentrations, scale the concentrations so that their 99th
  percentiles match a reference, and re-render with the reference stain vectors.
- **Reinhard** (Reinhard et al., 2001): match the mean and standard deviation of each CIELAB
  channel of the tissue pixels to a reference.

Plus :func:`hed_jitter`, the HED colour augmentation of Tellez et al. (2018): scale and shift
the haematoxylin, eosin and DAB channels of a colour deconvolution.

All functions take and return RGB uint8 arrays of shape (height, width, 3).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from osteomics.core.errors import InvalidOptionError

log = logging.getLogger(__name__)

#: Light transmitted through glass (the brightest RGB value of the background).
IO = 240.0
#: OD below this in any channel counts as background for the stain estimate (Macenko's beta).
OD_THRESHOLD = 0.15
#: Percentile of the angle distribution that bounds the stain vectors (Macenko's alpha).
ANGLE_PERCENTILE = 1.0
#: A tile needs at least this many tissue pixels for a stain estimate; fewer: left as it is.
MIN_TISSUE_PIXELS = 200

#: Reference H&E stain vectors (columns: haematoxylin, eosin; rows: OD in R, G, B) and the
#: 99th-percentile concentrations, as published with the Macenko method implementations.
MACENKO_REFERENCE_STAINS = ((0.5626, 0.2159), (0.7201, 0.8012), (0.4062, 0.5581))
MACENKO_REFERENCE_MAX_CONCENTRATIONS = (1.9705, 1.0308)
#: Reinhard reference: mean and standard deviation of L*, a*, b* over tissue pixels of a
#: typical H&E tile.
REINHARD_REFERENCE_MEAN = (70.0, 25.0, -5.0)
REINHARD_REFERENCE_STD = (15.0, 10.0, 6.0)

NORMALISERS = ("none", "macenko", "reinhard")


@dataclass(frozen=True)
class StainEstimate:
    """Stains of one tile, estimated by Macenko's method.

    Attributes
    ----------
    stains:
        (3, 2) unit OD vectors, columns haematoxylin then eosin.
    max_concentrations:
        (2,) 99th percentile of the haematoxylin and eosin concentrations.
    """

    stains: np.ndarray
    max_concentrations: np.ndarray


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Optical density -log(I / Io) of an RGB uint8 image, float64, same shape."""
    return -np.log((rgb.astype(np.float64) + 1.0) / IO)


def _tissue_od(rgb: np.ndarray) -> np.ndarray:
    od = optical_density(rgb).reshape(-1, 3)
    return od[np.all(od > OD_THRESHOLD, axis=1)]


def estimate_stains(rgb: np.ndarray) -> StainEstimate | None:
    """Macenko estimate of a tile's H and E stain vectors; None with too little tissue.

    Parameters
    ----------
    rgb:
        RGB uint8 (height, width, 3).
    """
    od = _tissue_od(rgb)
    if od.shape[0] < MIN_TISSUE_PIXELS:
        return None
    _, vectors = np.linalg.eigh(np.cov(od, rowvar=False))
    plane = vectors[:, 1:3]  # the two largest eigenvalues
    # Orient the plane so that stains (all-positive OD vectors) project positively.
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [ANGLE_PERCENTILE, 100.0 - ANGLE_PERCENTILE])
    v_low = plane @ np.array([np.cos(low), np.sin(low)])
    v_high = plane @ np.array([np.cos(high), np.sin(high)])
    # Haematoxylin absorbs red most; it is the vector with the larger R component.
    stains = np.stack([v_low, v_high] if v_low[0] > v_high[0] else [v_high, v_low], axis=1)
    stains = stains / np.linalg.norm(stains, axis=0, keepdims=True)
    concentrations = np.linalg.lstsq(stains, od.T, rcond=None)[0]
    max_c = np.percentile(concentrations, 99, axis=1)
    if np.any(max_c <= 1e-6):
        return None
    return StainEstimate(stains=stains, max_concentrations=max_c)


def macenko_normalise(
    rgb: np.ndarray,
    target_stains: np.ndarray | None = None,
    target_max_concentrations: np.ndarray | None = None,
) -> np.ndarray:
    """Re-render a tile with reference stain vectors and concentration range (Macenko).

    Parameters
    ----------
    rgb:
        RGB uint8 (height, width, 3).
    target_stains:
        (3, 2) reference OD vectors (haematoxylin, eosin); default
        :data:`MACENKO_REFERENCE_STAINS`.
    target_max_concentrations:
        (2,) reference 99th-percentile concentrations.

    Returns
    -------
    numpy.ndarray
        RGB uint8, same shape. A tile with too little tissue for an estimate (mostly glass) is
        returned unchanged.
    """
    estimate = estimate_stains(rgb)
    if estimate is None:
        return rgb.copy()
    ref = np.asarray(
        MACENKO_REFERENCE_STAINS if target_stains is None else target_stains, dtype=np.float64
    )
    ref_max = np.asarray(
        MACENKO_REFERENCE_MAX_CONCENTRATIONS
        if target_max_concentrations is None
        else target_max_concentrations,
        dtype=np.float64,
    )
    od = optical_density(rgb).reshape(-1, 3)
    concentrations = np.linalg.lstsq(estimate.stains, od.T, rcond=None)[0]
    concentrations *= (ref_max / estimate.max_concentrations)[:, None]
    out = IO * np.exp(-(ref @ concentrations))
    return np.clip(out.T.reshape(rgb.shape), 0, 255).astype(np.uint8)


def stain_concentrations(rgb: np.ndarray, stains: np.ndarray | None = None) -> np.ndarray:
    """Haematoxylin and eosin concentrations of every pixel, by colour deconvolution.

    Parameters
    ----------
    rgb:
        RGB uint8 (..., 3): one tile or a batch.
    stains:
        (3, 2) unit OD vectors (haematoxylin, eosin); default :data:`MACENKO_REFERENCE_STAINS`,
        which makes it exact for tiles re-rendered by :func:`macenko_normalise`.

    Returns
    -------
    numpy.ndarray
        float32 (..., 2): haematoxylin, eosin; clipped below at 0 (glass).
    """
    ref = np.asarray(MACENKO_REFERENCE_STAINS if stains is None else stains, dtype=np.float64)
    unmix = np.linalg.pinv(ref).T.astype(np.float32)  # (3, 2): OD -> concentrations
    od = -np.log((np.asarray(rgb, dtype=np.float32) + 1.0) / np.float32(IO))
    return np.maximum(od @ unmix, 0.0).astype(np.float32)


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Boolean (height, width): pixels with OD above :data:`OD_THRESHOLD` in some channel."""
    return np.any(optical_density(rgb) > OD_THRESHOLD, axis=-1)


def lab_statistics(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and standard deviation of L*, a*, b* over a tile's tissue pixels (None: no tissue)."""
    from skimage.color import rgb2lab

    mask = tissue_mask(rgb)
    if mask.sum() < MIN_TISSUE_PIXELS:
        return None
    lab = rgb2lab(rgb)[mask]
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard_normalise(
    rgb: np.ndarray,
    target_mean: np.ndarray | None = None,
    target_std: np.ndarray | None = None,
) -> np.ndarray:
    """Match the CIELAB mean and standard deviation of a tile's tissue to a reference.

    The transform is estimated on tissue pixels and applied to tissue pixels only; glass stays
    glass. A tile with too little tissue is returned unchanged.

    Parameters
    ----------
    rgb:
        RGB uint8 (height, width, 3).
    target_mean, target_std:
        (3,) reference L*, a*, b* statistics; defaults :data:`REINHARD_REFERENCE_MEAN` and
        :data:`REINHARD_REFERENCE_STD`.
    """
    from skimage.color import lab2rgb, rgb2lab

    stats = lab_statistics(rgb)
    if stats is None:
        return rgb.copy()
    mean, std = stats
    t_mean = np.asarray(REINHARD_REFERENCE_MEAN if target_mean is None else target_mean, float)
    t_std = np.asarray(REINHARD_REFERENCE_STD if target_std is None else target_std, float)
    mask = tissue_mask(rgb)
    lab = rgb2lab(rgb)
    lab[mask] = (lab[mask] - mean) / np.maximum(std, 1e-6) * t_std + t_mean
    lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
    with warnings.catch_warnings():  # out-of-gamut colours are clipped, as intended
        warnings.simplefilter("ignore", UserWarning)
        out = lab2rgb(lab)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def normalise(rgb: np.ndarray, method: str) -> np.ndarray:
    """Apply the stain normaliser named ``method`` (one of :data:`NORMALISERS`)."""
    if method == "none":
        return rgb
    if method == "macenko":
        return macenko_normalise(rgb)
    if method == "reinhard":
        return reinhard_normalise(rgb)
    raise InvalidOptionError(
        f"unknown stain normalisation {method!r}; choose one of {', '.join(NORMALISERS)}"
    )


def hed_jitter(
    rgb: np.ndarray, rng: np.random.Generator, scale: float = 0.05, shift: float = 0.05
) -> np.ndarray:
    """HED colour augmentation: each stain channel x (1 + U(-scale, scale)) + U(-shift, shift).

    Parameters
    ----------
    rgb:
        RGB uint8 (height, width, 3).
    rng:
        Source of the random factors (three scales, then three shifts).
    scale, shift:
        Strength; Tellez et al. call 0.05 light and 0.2 strong for the scale.

    Returns
    -------
    numpy.ndarray
        RGB uint8, same shape.
    """
    from skimage.color import hed2rgb, rgb2hed

    alpha = rng.uniform(-scale, scale, size=3)
    beta = rng.uniform(-shift, shift, size=3)
    hed = rgb2hed(rgb)
    # rgb2hed gives stain densities in log10 units divided by log(1e-6); shifts are relative
    # to each channel's typical tissue density so that `shift` is a fraction too.
    hed = hed * (1.0 + alpha) + beta * np.maximum(hed.max(axis=(0, 1)), 1e-3)
    out = hed2rgb(hed)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
