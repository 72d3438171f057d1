"""Validation of values that arrive from outside: DICOM UIDs and AE titles.

A UID is data from a peer: it only ever becomes part of a file path after
:func:`validate_uid` accepted it (digits and dots, so no ``/``, ``..`` or NUL can get through).
"""

from __future__ import annotations

import re

from osteomics.radiology.errors import InvalidAETitleError, InvalidUIDError

#: Maximum length of a UI value (PS3.5 table 6.2-1).
UID_MAX_LENGTH = 64

#: Maximum length of an AE title (PS3.5 table 6.2-1).
AE_TITLE_MAX_LENGTH = 16

# Components are "0" or digits without a leading zero, separated by single dots (PS3.5 9.1).
_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")

# AE: default character repertoire (printable ASCII 0x20-0x7E) without backslash.
_AE_RE = re.compile(r"[\x20-\x5b\x5d-\x7e]+")


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a ``str`` that is a conformant DICOM UID.

    Conformant: 1-64 characters, components of digits separated by single dots, no component
    with a leading zero unless it is exactly ``"0"``, no padding.
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= UID_MAX_LENGTH
        and _UID_RE.fullmatch(value) is not None
    )


def validate_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` when it is a conformant UID; raise otherwise.

    Parameters
    ----------
    value:
        The candidate, typically read from a received dataset.
    what:
        What the value is (``"SOP Instance UID"``), for the message.

    Raises
    ------
    InvalidUIDError
        Naming ``what``, a printable excerpt of the value and the rule it broke.
    """
    if not isinstance(value, str) or not value:
        raise InvalidUIDError(f"{what} is missing or empty; the sender must set it")
    if len(value) > UID_MAX_LENGTH:
        raise InvalidUIDError(
            f"{what} {_excerpt(value)} has {len(value)} characters, more than the "
            f"{UID_MAX_LENGTH} DICOM allows; the sender must fix the object"
        )
    if _UID_RE.fullmatch(value) is None:
        raise InvalidUIDError(
            f"{what} {_excerpt(value)} is not a DICOM UID (digits and single dots only, no "
            "leading zeros in a component); the sender must fix the object"
        )
    return value


def validate_ae_title(value: object, what: str = "AE title") -> str:
    """Return the AE title without its insignificant leading/trailing spaces; raise if invalid.

    Valid: 1-16 characters of printable ASCII other than backslash, not only spaces.

    Raises
    ------
    InvalidAETitleError
        Naming ``what`` and the rule broken.
    """
    if not isinstance(value, str):
        raise InvalidAETitleError(f"{what} must be a string, not {type(value).__name__}")
    stripped = value.strip(" ")
    if not stripped:
        raise InvalidAETitleError(f"{what} is empty; give 1-16 characters, e.g. OSTEOMICS")
    if len(value) > AE_TITLE_MAX_LENGTH:
        raise InvalidAETitleError(
            f"{what} {_excerpt(value)} is longer than {AE_TITLE_MAX_LENGTH} characters; shorten it"
        )
    if _AE_RE.fullmatch(value) is None:
        raise InvalidAETitleError(
            f"{what} {_excerpt(value)} may only hold printable ASCII characters other than "
            "backslash"
        )
    return stripped


def _excerpt(value: str, limit: int = 80) -> str:
    """A printable, bounded rendering of an untrusted value for messages and logs."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return ascii(text)
