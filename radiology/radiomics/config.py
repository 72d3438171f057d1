"""Radiomics configurations: IBSI image processing settings, as named TOML files or paths.

Shipped configurations live in ``configs/<name>.toml`` next to this module; ``load_config``
takes either such a name or the path to a TOML file of the same layout (see
``configs/ibsi-digital-phantom.toml``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from osteomics.radiology.radiomics.discretise import Discretisation
from osteomics.radiology.radiomics.errors import RadiomicsConfigError
from osteomics.radiology.radiomics.interpolate import Interpolation


@dataclass(frozen=True)
class RadiomicsConfig:
    """Settings of one radiomics extraction.

    Attributes
    ----------
    name
        Configuration name (recorded in the provenance).
    description
        One line for humans.
    interpolation
        Resampling to a new grid first (IBSI-aligned grid centres), or None: none.
    resegmentation_range
        ``(lower, upper)`` intensity range kept in the intensity mask, intensity units; None: none.
    outlier_sigma
        Remove intensity-mask voxels beyond mean ± ``outlier_sigma`` standard deviations;
        None: none.
    discretisation
        Discretisation for the intensity histogram and the texture matrices.
    ivh
        Discretisation for the intensity-volume histogram (``"none"``: intensities, step 1).
    sphere_volume_mm3
        Sphere volume for the local and global intensity peaks, mm³.
    source
        Where the configuration was read from.
    """

    name: str
    description: str = ""
    interpolation: Interpolation | None = None
    resegmentation_range: tuple[float, float] | None = None
    outlier_sigma: float | None = None
    discretisation: Discretisation = field(default_factory=Discretisation)
    ivh: Discretisation = field(default_factory=Discretisation)
    sphere_volume_mm3: float = 1000.0
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain-data view for the provenance JSON."""
        from dataclasses import asdict

        return asdict(self)


def shipped_configs() -> list[str]:
    """Names of the configurations shipped with osteomics."""
    folder = resources.files("osteomics.radiology.radiomics") / "configs"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def _discretisation(table: dict[str, Any], where: str) -> Discretisation:
    unknown = set(table) - {"method", "n_bins", "bin_width", "lower_bound"}
    if unknown:
        raise RadiomicsConfigError(f"{where}: unknown keys {sorted(unknown)}")
    return Discretisation(
        method=table.get("method", "none"),
        n_bins=table.get("n_bins"),
        bin_width=table.get("bin_width"),
        lower_bound=table.get("lower_bound"),
    )


_INTERPOLATION_KEYS = {"enabled", "in_plane_mm", "slice_mm", "image_method", "mask_method",
                       "mask_threshold", "round_intensities"}  # fmt: skip


def _interpolation(table: dict[str, Any], source: str) -> Interpolation | None:
    unknown = set(table) - _INTERPOLATION_KEYS
    if unknown:
        raise RadiomicsConfigError(f"{source} [interpolation]: unknown keys {sorted(unknown)}")
    if not table.get("enabled", False):
        return None
    if "in_plane_mm" not in table:
        raise RadiomicsConfigError(
            f"{source} [interpolation]: enabled needs in_plane_mm (and slice_mm for 3D)"
        )
    slice_mm = table.get("slice_mm")
    try:
        return Interpolation(
            in_plane_mm=float(table["in_plane_mm"]),
            slice_mm=None if slice_mm is None else float(slice_mm),
            image_method=table.get("image_method", "linear"),
            mask_method=table.get("mask_method", "linear"),
            mask_threshold=float(table.get("mask_threshold", 0.5)),
            round_intensities=bool(table.get("round_intensities", False)),
        )
    except RadiomicsConfigError as exc:
        raise RadiomicsConfigError(f"{source} [interpolation]: {exc}") from exc


def parse_config(data: dict[str, Any], source: str) -> RadiomicsConfig:
    """Build a :class:`RadiomicsConfig` from parsed TOML.

    Raises
    ------
    RadiomicsConfigError
        Missing name, unknown keys or sections, invalid values.
    """
    known = {"name", "description", "interpolation", "resegmentation", "discretisation", "ivh",
             "local_intensity"}  # fmt: skip
    unknown = set(data) - known
    if unknown:
        raise RadiomicsConfigError(f"{source}: unknown sections or keys {sorted(unknown)}")
    if "name" not in data:
        raise RadiomicsConfigError(f"{source}: the configuration needs a name")
    interpolation = _interpolation(data.get("interpolation", {}), source)
    reseg = data.get("resegmentation", {})
    rng = reseg.get("range")
    if rng is not None and (len(rng) != 2 or not rng[0] < rng[1]):
        raise RadiomicsConfigError(f"{source}: resegmentation.range must be [lower, upper]")
    sigma = reseg.get("outlier_sigma")
    if sigma is not None and not sigma > 0:
        raise RadiomicsConfigError(f"{source}: resegmentation.outlier_sigma must be > 0")
    try:
        disc = _discretisation(data.get("discretisation", {}), f"{source} [discretisation]")
        ivh = _discretisation(data.get("ivh", {}), f"{source} [ivh]")
    except RadiomicsConfigError as exc:
        raise RadiomicsConfigError(f"{source}: {exc}") from exc
    sphere = float(data.get("local_intensity", {}).get("sphere_volume_mm3", 1000.0))
    return RadiomicsConfig(
        name=str(data["name"]),
        description=str(data.get("description", "")),
        interpolation=interpolation,
        resegmentation_range=(float(rng[0]), float(rng[1])) if rng is not None else None,
        outlier_sigma=float(sigma) if sigma is not None else None,
        discretisation=disc,
        ivh=ivh,
        sphere_volume_mm3=sphere,
        source=source,
    )


def load_config(name_or_path: str | Path) -> RadiomicsConfig:
    """Load a shipped configuration by name, or a TOML file by path.

    Raises
    ------
    RadiomicsConfigError
        Unknown name (the message lists the shipped ones), unreadable or invalid TOML.
    """
    text = str(name_or_path)
    path = Path(text)
    if text.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise RadiomicsConfigError(f"{path}: no such configuration file")
        raw = path.read_bytes()
        source = str(path)
    else:
        res = resources.files("osteomics.radiology.radiomics") / "configs" / f"{text}.toml"
        if not res.is_file():
            raise RadiomicsConfigError(
                f"unknown radiomics configuration {text!r}; shipped: {', '.join(shipped_configs())}"
                " (or give the path to a .toml file)"
            )
        raw = res.read_bytes()
        source = f"shipped:{text}"
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RadiomicsConfigError(f"{source}: not valid TOML ({exc})") from exc
    return parse_config(data, source)
