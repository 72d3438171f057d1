"""H&E augmentation: geometry that histology does not care about, and stain variation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osteomics.wsi.stain import hed_jitter


@dataclass(frozen=True)
class AugmentParameters:
    """Strength of each augmentation; zero turns it off."""

    #: Random horizontal/vertical flips and 90° rotations (the 8 symmetries of a square).
    dihedral: bool = True
    #: HED jitter: relative scale range of each stain channel (Tellez: 0.05 light, 0.2 strong).
    hed_scale: float = 0.2
    #: HED jitter: shift range, as a fraction of each channel's maximum density.
    hed_shift: float = 0.1
    #: Brightness: add U(-b, b) x 255 to every channel.
    brightness: float = 0.1
    #: Contrast: scale around the tile mean by 1 + U(-c, c).
    contrast: float = 0.2
    #: Saturation: blend with the tile's grey by 1 + U(-s, s).
    saturation: float = 0.2


def augment_tile(
    rgb: np.ndarray, rng: np.random.Generator, params: AugmentParameters | None = None
) -> np.ndarray:
    """One randomly augmented copy of an RGB uint8 tile, same shape and dtype.

    The same ``rng`` state gives the same copy. The draws happen in a fixed order whatever the
    parameters, so turning one augmentation off does not change the others.
    """
    params = params or AugmentParameters()
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    colour_rng = np.random.default_rng(rng.integers(2**63))
    b, c, s = rng.uniform(-1.0, 1.0, size=3)
    out = rgb
    if params.dihedral:
        out = np.rot90(out, k)
        if flip:
            out = out[:, ::-1]
        out = np.ascontiguousarray(out)
    if params.hed_scale > 0 or params.hed_shift > 0:
        out = hed_jitter(out, colour_rng, params.hed_scale, params.hed_shift)
    if params.brightness or params.contrast or params.saturation:
        f = out.astype(np.float32)
        grey = f.mean(axis=-1, keepdims=True)
        f = grey + (f - grey) * (1.0 + s * params.saturation)
        f = f.mean() + (f - f.mean()) * (1.0 + c * params.contrast)
        f = f + b * params.brightness * 255.0
        out = np.clip(np.round(f), 0, 255).astype(np.uint8)
    return out
