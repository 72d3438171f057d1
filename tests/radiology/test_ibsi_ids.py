"""IBSI permanent identifiers in the feature registry: well-formed, one per feature across the
aggregation variants, distinct between features, and written to the output table."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

from osteomics.radiology.radiomics.features import IBSI_IDS, REGISTRY, family_stem


def test_every_feature_has_a_well_formed_ibsi_id() -> None:
    missing = [key for key, spec in REGISTRY.items() if spec.ibsi_id is None]
    assert missing == []
    bad = {
        spec.ibsi_id
        for spec in REGISTRY.values()
        if not re.fullmatch(r"[0-9A-Z]{4}", str(spec.ibsi_id))
    }
    assert bad == set()


def test_ibsi_ids_are_unique_per_variant_independent_feature() -> None:
    features_of: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for (family, feature), spec in REGISTRY.items():
        assert spec.ibsi_id is not None
        features_of[spec.ibsi_id].add((family_stem(family), feature))
    shared = {code: sorted(keys) for code, keys in features_of.items() if len(keys) > 1}
    assert shared == {}
    # Every aggregation variant of a feature carries its feature's identifier.
    assert len(features_of) == len(set(IBSI_IDS.values())) == len(IBSI_IDS) == 169


def test_ibsi_ids_agree_with_mirp(tmp_path: Path) -> None:
    """MIRP 2.7.0's feature classes name their IBSI identifier (``self.ibsi_id``); its wheel is
    fetched from the package index (no install: only its source is read)."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "mirp==2.7.0",
         "--dest", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"cannot fetch the MIRP 2.7.0 wheel: {done.stderr}"
    [wheel] = tmp_path.glob("mirp-2.7.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        sources = [
            archive.read(name).decode()
            for name in archive.namelist()
            if re.fullmatch(r"mirp/_features/\w+_features\.py", name)
        ]
    assert len(sources) > 5, "MIRP's feature modules moved: update this test"
    mirp = {code for text in sources for code in re.findall(r'ibsi_id = "([0-9A-Z]{4,5})"', text)}
    # MIRP writes sum entropy as P6QZ1 (typo); every other identifier of ours appears there.
    assert set(IBSI_IDS.values()) - mirp == {"P6QZ"}


def test_known_identifiers_and_variant_stripping() -> None:
    assert REGISTRY[("Co-occurrence matrix (3D, merged)", "Joint maximum")].ibsi_id == "GYBY"
    assert REGISTRY[("Co-occurrence matrix (2D, averaged)", "Joint maximum")].ibsi_id == "GYBY"
    assert REGISTRY[("Statistics", "Mean")].ibsi_id == "Q4LE"
    assert REGISTRY[("Intensity histogram", "Mean")].ibsi_id == "X6K6"
    assert REGISTRY[("Morphology", "Volume (mesh)")].ibsi_id == "RNU0"
    assert family_stem("Size zone matrix (2.5D)") == "Size zone matrix"
    assert family_stem("Volume density (AABB)") == "Volume density (AABB)"
    assert family_stem("Morphology") == "Morphology"
