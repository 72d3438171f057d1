"""Finding slides: turn the paths a user typed into a sorted list of :class:`SlideSource`.

A slide is one file (SVS, NDPI, tiled TIFF, ...) or, for DICOM WSI, the instances of one
series in one folder (one instance per pyramid level). Files whose extension is not a slide
format are ignored (and listed as such); files with a slide extension that cannot be opened
become error rows later, when a reader tries them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

SLIDE_SUFFIXES = frozenset(
    {
        ".svs",
        ".tif",
        ".tiff",
        ".ndpi",
        ".vms",
        ".vmu",
        ".scn",
        ".mrxs",
        ".svslide",
        ".bif",
        ".dcm",
        ".isyntax",
        ".czi",
    }
)
VL_WHOLE_SLIDE_MICROSCOPY_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"


#: Prefix of a remote slide: ``dicomweb:REMOTE/<StudyUID>/<SeriesUID>``.
DICOMWEB_PREFIX = "dicomweb:"


class RemoteSlide(Protocol):
    """A slide read from a server instead of files (a DICOM WSI series over DICOMweb); made
    by the plugins layer (:func:`osteomics.plugins.dicomweb_connector.remote_slide_source`)."""

    def open(self) -> Any:
        """The opened slide as its reader expects it (a ``wsidicom.WsiDicom``)."""
        ...

    def describe(self) -> str:
        """Where it is, for messages and provenance (never a secret)."""
        ...


@dataclass(frozen=True)
class SlideSource:
    """Where one slide's bytes are.

    Attributes
    ----------
    name:
        Folder name for this slide's outputs (safe characters only, unique within a run).
    path:
        The file, or for DICOM WSI the folder holding its instances; for a remote slide its
        ``dicomweb:REMOTE/<StudyUID>/<SeriesUID>`` locator.
    files:
        Every file that makes up the slide (hashed for provenance); none for a remote slide.
    remote:
        A remote slide's opener (:class:`RemoteSlide`), or None for files.
    """

    name: str
    path: Path
    files: tuple[Path, ...]
    remote: RemoteSlide | None = field(default=None, compare=False, repr=False)

    @property
    def is_dicom(self) -> bool:
        if self.remote is not None:
            return True
        return self.files[0].suffix.lower() == ".dcm" or self.path.is_dir()


def parse_remote_slide(text: str) -> tuple[str, str, str] | None:
    """``(remote, study UID, series UID)`` of ``dicomweb:REMOTE/<StudyUID>/<SeriesUID>``, or
    None when ``text`` is not a remote slide locator (a path).

    Raises
    ------
    NotASlideError
        It starts with ``dicomweb:`` but is not of that form.
    """
    if not text.startswith(DICOMWEB_PREFIX):
        return None
    parts = text[len(DICOMWEB_PREFIX) :].strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        from osteomics.wsi.errors import NotASlideError

        raise NotASlideError(
            f"{text}: a remote slide is dicomweb:REMOTE/<StudyUID>/<SeriesUID> (REMOTE a "
            '[remotes.NAME] of node.toml with protocol = "dicomweb")'
        )
    remote, study, series = parts
    return remote, study, series


@dataclass(frozen=True)
class IgnoredFile:
    """A file found while searching a folder that is not a slide format."""

    path: Path
    reason: str


def safe_name(text: str) -> str:
    """Slide names become folder names: keep letters, digits, ``.-_`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "slide"
    return cleaned[:120]


def source_for_path(path: Path) -> SlideSource:
    """A :class:`SlideSource` for one file, or a folder holding one DICOM WSI series."""
    path = Path(path)
    if not path.is_dir():
        return SlideSource(safe_name(path.stem), path, (path,))
    dicom = [p for p in path.iterdir() if p.suffix.lower() == ".dcm"]
    if not dicom:
        return SlideSource(safe_name(path.name), path, (path,))
    groups, _ignored = _group_dicom_series(dicom)
    if len(groups) != 1:
        from osteomics.wsi.errors import NotASlideError

        raise NotASlideError(
            f"{path}: the folder holds {len(groups)} DICOM whole-slide series, not one; "
            "give `osteomics tile` the folder (it takes each series as a slide) or move each "
            "series into its own folder"
        )
    (files,) = groups.values()
    return SlideSource(safe_name(path.name), path, tuple(sorted(files)))


def find_slides(paths: list[Path]) -> tuple[list[SlideSource], list[IgnoredFile]]:
    """Expand the user's paths into slides.

    Files are taken as given; folders are searched recursively. DICOM files in one folder
    are grouped by Series Instance UID into one slide each; DICOM objects that are not
    VL Whole Slide Microscopy images (annotations, SEG) are ignored with a reason.

    Returns
    -------
    slides, ignored:
        Slides sorted by path with unique names; files passed over, with the reason.
    """
    singles: list[Path] = []
    dicom_by_folder: dict[Path, list[Path]] = defaultdict(list)
    ignored: list[IgnoredFile] = []
    for given in paths:
        given = Path(given)
        if given.is_file():
            if given.suffix.lower() == ".dcm":
                dicom_by_folder[given.parent].append(given)
            else:
                singles.append(given)
            continue
        if given.is_dir():
            for p in sorted(given.rglob("*")):
                if not p.is_file() or any(
                    part.startswith(".") for part in p.relative_to(given).parts
                ):
                    continue
                suffix = p.suffix.lower()
                if suffix == ".dcm":
                    dicom_by_folder[p.parent].append(p)
                elif suffix in SLIDE_SUFFIXES:
                    singles.append(p)
                elif p.parent.with_suffix(".mrxs").is_file():
                    continue  # MIRAX data folder next to its .mrxs file
                else:
                    ignored.append(
                        IgnoredFile(p, f"not a slide format ({suffix or 'no extension'})")
                    )
            continue
        # Does not exist: keep it, so the run reports it as an error row naming the path.
        singles.append(given)

    sources = [SlideSource(safe_name(p.stem), p, (p,)) for p in singles]
    for folder, files in dicom_by_folder.items():
        groups, more_ignored = _group_dicom_series(files)
        ignored.extend(more_ignored)
        for series_uid, members in groups.items():
            name = folder.name if len(groups) == 1 else f"{folder.name}-{_short_hash(series_uid)}"
            sources.append(SlideSource(safe_name(name), folder, tuple(sorted(members))))
    sources.sort(key=lambda s: (str(s.path), s.files))
    return _unique_names(sources), ignored


def _group_dicom_series(files: list[Path]) -> tuple[dict[str, list[Path]], list[IgnoredFile]]:
    import pydicom

    groups: dict[str, list[Path]] = defaultdict(list)
    ignored: list[IgnoredFile] = []
    for f in sorted(set(files)):
        try:
            ds = pydicom.dcmread(
                f, stop_before_pixels=True, specific_tags=["SOPClassUID", "SeriesInstanceUID"]
            )
            sop_class = str(ds.get("SOPClassUID", ""))
            series = str(ds.get("SeriesInstanceUID", ""))
        except Exception as exc:
            # Unreadable DICOM: make it its own "slide" so it is reported as an error row.
            log.debug("cannot parse DICOM header of %s: %s", f, exc)
            groups[f"unreadable:{f}"].append(f)
            continue
        if sop_class != VL_WHOLE_SLIDE_MICROSCOPY_IMAGE:
            ignored.append(IgnoredFile(f, f"DICOM object is not a whole-slide image ({sop_class})"))
            continue
        groups[series].append(f)
    return dict(groups), ignored


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _unique_names(sources: list[SlideSource]) -> list[SlideSource]:
    counts: dict[str, int] = defaultdict(int)
    for s in sources:
        counts[s.name] += 1
    out = []
    for s in sources:
        if counts[s.name] > 1:
            s = SlideSource(f"{s.name}-{_short_hash(str(s.path) + str(s.files))}", s.path, s.files)
        out.append(s)
    return out
