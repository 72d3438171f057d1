"""``extract_features``: IBSI image processing, then every feature family, as a flat list.

Processing order (IBSI 1 chapter 2): interpolation of image and mask (IBSI grid alignment,
partial-volume threshold, optional intensity rounding; :mod:`.interpolate`), re-segmentation
(range, then outliers) giving the intensity mask, discretisation, feature families.
The morphological mask is the ROI before re-segmentation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from osteomics.radiology.radiomics.config import RadiomicsConfig
from osteomics.radiology.radiomics.discretise import discretise, n_bins_fixed_size
from osteomics.radiology.radiomics.errors import EmptyMaskError, RadiomicsConfigError
from osteomics.radiology.radiomics.features import GROUPS, REGISTRY, FeatureValue, Prepared
from osteomics.radiology.radiomics.image import Mask, Volume, check_same_grid
from osteomics.radiology.radiomics.interpolate import resample

log = logging.getLogger(__name__)


def resegment(
    image: NDArray[np.float64], roi: NDArray[np.bool_], config: RadiomicsConfig
) -> NDArray[np.bool_]:
    """Intensity mask: ``roi`` restricted to the re-segmentation range, then outliers removed."""
    mask = roi.copy()
    if config.resegmentation_range is not None:
        lo, hi = config.resegmentation_range
        mask &= (image >= lo) & (image <= hi)
    if config.outlier_sigma is not None and mask.any():
        vals = image[mask]
        mu, sd = float(vals.mean()), float(vals.std())
        mask &= np.abs(image - mu) <= config.outlier_sigma * sd
    return mask


def prepare(volume: Volume, mask: Mask, config: RadiomicsConfig) -> Prepared:
    """Apply the IBSI image processing of ``config`` to ``volume`` within ``mask``.

    Raises
    ------
    GeometryMismatchError, EmptyMaskError
        The mask is not on the image grid, or is (or becomes, after re-segmentation) empty.
    RadiomicsConfigError
        The configuration does not fit the image.
    """
    check_same_grid(volume, mask)
    if config.interpolation is not None:
        volume, mask = resample(volume, mask, config.interpolation)
        if mask.n_voxels == 0:
            raise EmptyMaskError(
                f"ROI {mask.name!r} is empty after interpolation with configuration "
                f"{config.name!r} (partial-volume threshold "
                f"{config.interpolation.mask_threshold})"
            )
    image = volume.array
    morph_mask = mask.array
    int_mask = resegment(image, morph_mask, config)
    if not int_mask.any():
        raise EmptyMaskError(
            f"ROI {mask.name!r} is empty after re-segmentation with configuration {config.name!r}"
        )
    disc = config.discretisation
    if disc.method == "fixed_bin_size" and disc.lower_bound is None and config.resegmentation_range:
        disc = replace(disc, lower_bound=config.resegmentation_range[0])
    grey = discretise(image, int_mask, disc)
    if config.ivh.method == "none":
        ivh_values = image[int_mask]
        ivh_step = 1.0
        ivh_range = config.resegmentation_range
    elif config.ivh.method == "fixed_bin_size":
        # Calibrated, continuous intensities (IBSI configuration C): bins of the given width
        # from the re-segmentation lower bound, each voxel represented by its bin centre, on
        # the re-segmentation range.
        ivh_disc = config.ivh
        if ivh_disc.lower_bound is None and config.resegmentation_range:
            ivh_disc = replace(ivh_disc, lower_bound=config.resegmentation_range[0])
        ivh_grey = discretise(image, int_mask, ivh_disc)
        ivh_step = ivh_grey.bin_width
        ivh_values = np.asarray(
            ivh_grey.lower_bound + (ivh_grey.levels[int_mask] - 0.5) * ivh_step, dtype=np.float64
        )
        ivh_range = (
            None
            if config.resegmentation_range is None
            else (
                ivh_grey.lower_bound + 0.5 * ivh_step,
                ivh_grey.lower_bound
                + (
                    n_bins_fixed_size(
                        ivh_grey.lower_bound, config.resegmentation_range[1], ivh_step
                    )
                    - 0.5
                )
                * ivh_step,
            )
        )
    else:
        # Arbitrary units (IBSI configuration E): grey levels 1..N_g, step 1.
        ivh_grey = discretise(image, int_mask, config.ivh)
        ivh_values = ivh_grey.levels[int_mask].astype(np.float64)
        ivh_step = 1.0
        ivh_range = (1.0, float(ivh_grey.n_levels))
    return Prepared(
        image=image,
        morph_mask=morph_mask,
        int_mask=int_mask,
        spacing_mm=volume.spacing_mm,
        grey=grey,
        ivh_values=ivh_values,
        ivh_bin_width=ivh_step,
        ivh_range=ivh_range,
        sphere_volume_mm3=config.sphere_volume_mm3,
    )


def extract_features(
    volume: Volume,
    mask: Mask,
    config: RadiomicsConfig,
    *,
    groups: Iterable[str] | None = None,
) -> list[FeatureValue]:
    """Compute IBSI features of ``volume`` in the ROI ``mask``.

    Parameters
    ----------
    volume
        The image.
    mask
        The ROI on the image's grid.
    config
        Processing settings (see :func:`osteomics.radiology.radiomics.config.load_config`).
    groups
        Feature groups to compute (keys of :data:`~osteomics.radiology.radiomics.features.GROUPS`:
        ``morphology``, ``local_intensity``, ``statistics``, ``intensity_histogram``, ``ivh``,
        ``glcm``, ``glrlm``, ``glszm``, ``gldzm``, ``ngtdm``, ``ngldm``); default all.

    Returns
    -------
    list of FeatureValue
        One row per (family, feature), in registry order.

    Raises
    ------
    GeometryMismatchError, EmptyMaskError, RadiomicsConfigError
        See :func:`prepare`; an unknown group name raises RadiomicsConfigError.
    """
    wanted = list(GROUPS) if groups is None else list(groups)
    unknown = [g for g in wanted if g not in GROUPS]
    if unknown:
        raise RadiomicsConfigError(f"unknown feature groups {unknown}; known: {list(GROUPS)}")
    prepared = prepare(volume, mask, config)
    out: list[FeatureValue] = []
    for name in wanted:
        group = GROUPS[name]
        t0 = time.perf_counter()
        computed = group.compute(prepared)
        log.debug("%s: %.3f s", name, time.perf_counter() - t0)
        for family, features in group.families.items():
            values = computed[family]
            for feature in features:
                spec = REGISTRY[(family, feature)]
                out.append(FeatureValue(family, feature, spec.ibsi_id, float(values[feature])))
    return out
