"""UID and AE-title validation: what may become a path component or an allow-list entry."""

from __future__ import annotations

import pytest

from osteomics.radiology.errors import InvalidAETitleError, InvalidUIDError
from osteomics.radiology.uids import is_valid_uid, validate_ae_title, validate_uid

VALID_UIDS = [
    "1.2.840.10008.1.2",
    "1.3.6.1.4.1.14519.5.2.1.5168.1900.197631141779842296796213536777",  # real STS, 64 chars
    "0",
    "1.0.2",
    "2.25.329800735698586629295641978511506172918",
]

INVALID_UIDS = [
    "",
    "1.2.3/../../etc",
    "../1.2.3",
    "1.2.3\x00",
    "1.02.3",  # leading zero in a component
    "01.2",
    "1..2",
    ".1.2",
    "1.2.",
    "1.2.3 ",
    "1.2.a",
    "1." + "2" * 63,  # 65 characters
    "1\\2",
]


@pytest.mark.parametrize("uid", VALID_UIDS)
def test_valid_uids_pass_unchanged(uid: str) -> None:
    assert is_valid_uid(uid)
    assert validate_uid(uid) == uid


@pytest.mark.parametrize("uid", INVALID_UIDS)
def test_invalid_uids_are_refused(uid: str) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(InvalidUIDError) as info:
        validate_uid(uid, "SOP Instance UID")
    assert "SOP Instance UID" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_uid_of_exactly_64_characters_is_valid_and_65_is_not() -> None:
    uid64 = "1." + "2" * 62
    assert len(uid64) == 64 and is_valid_uid(uid64)
    assert not is_valid_uid(uid64 + "3")


def test_non_strings_are_not_uids() -> None:
    assert not is_valid_uid(None)
    assert not is_valid_uid(12)
    with pytest.raises(InvalidUIDError):
        validate_uid(None)


@pytest.mark.parametrize(
    ("title", "expected"),
    [("OSTEOMICS", "OSTEOMICS"), (" PACS ", "PACS"), ("A" * 16, "A" * 16), ("my-ae_1", "my-ae_1")],
)
def test_valid_ae_titles_are_stripped(title: str, expected: str) -> None:
    assert validate_ae_title(title) == expected


@pytest.mark.parametrize("title", ["", "    ", "A" * 17, "BAD\\AE", "TAB\tAE", "ÄE", "NUL\x00"])
def test_invalid_ae_titles_are_refused(title: str) -> None:
    with pytest.raises(InvalidAETitleError):
        validate_ae_title(title)
