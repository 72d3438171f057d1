"""DICOM Part 10 bytes, fast: the File Meta Information the node writes, and one walk over a
received dataset that checks it is complete and picks out the attributes the index needs.

pydicom does both (``write_file_meta_info``, ``data_element_generator`` + element conversion),
but for every C-STORE they cost 0.3 ms and 0.45 ms, more than the file's write and fsync
together. Here the dataset's elements are walked with ``struct`` over the bytes, values are
sliced, never copied or converted, and only the wanted ones are kept. The encodings covered
are the little-endian ones (implicit and explicit VR, every compressed transfer syntax);
deflated and big-endian datasets are left to pydicom by the caller. The tests compare both
functions with pydicom on the real STS files and on truncated copies.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PREAMBLE = b"\x00" * 128 + b"DICM"

#: Explicit VRs whose header has a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD

_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class IncompleteDatasetError(ValueError):
    """The bytes end inside an element, or a sequence or item is not terminated."""


@dataclass(frozen=True)
class RawValue:
    """One element's encoded value as found in the dataset (VR ``None`` for implicit VR)."""

    vr: str | None
    value: bytes


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """The File Meta Information group (0002) in Explicit VR Little Endian, without preamble.

    The same bytes as pydicom's ``write_file_meta_info`` for these six elements (group length,
    version 00 01, media storage SOP class and instance, transfer syntax, implementation class
    and version). Raises ``UnicodeEncodeError`` for a value that is not ASCII.
    """
    elements = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", encode_ui(sop_class_uid)),
            _explicit(0x0003, b"UI", encode_ui(sop_instance_uid)),
            _explicit(0x0010, b"UI", encode_ui(transfer_syntax_uid)),
            _explicit(0x0012, b"UI", encode_ui(implementation_class_uid)),
            _explicit(0x0013, b"SH", _text(implementation_version_name)),
        )
    )
    return _explicit(0x0000, b"UL", _U32.pack(len(elements))) + elements


def encode_ui(uid: str) -> bytes:
    value = uid.encode("ascii")
    return value + b"\x00" if len(value) % 2 else value


def _text(text: str) -> bytes:
    value = text.encode("ascii")
    return value + b" " if len(value) % 2 else value


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in _LONG_VRS:
        return _TAG.pack(0x0002, element) + vr + b"\x00\x00" + _U32.pack(len(value)) + value
    return _TAG.pack(0x0002, element) + vr + _U16.pack(len(value)) + value


def scan_dataset(
    data: bytes, start: int, implicit_vr: bool, wanted: frozenset[int]
) -> dict[int, RawValue]:
    """Walk the little-endian dataset in ``data[start:]`` to its very end; return the
    top-level elements whose tag (``group << 16 | element``) is in ``wanted``.

    Every element must lie wholly inside the bytes, sequences and items of undefined length
    must find their delimiters (nested datasets are walked, encapsulated pixel data skipped
    fragment by fragment), and the last element must end exactly at ``len(data)``.

    Raises
    ------
    IncompleteDatasetError
        Where the dataset is cut, with the byte offset.
    """
    found: dict[int, RawValue] = {}
    end = len(data)
    position = _walk(data, start, end, implicit_vr, wanted, found, in_item=False)
    if position != end:  # pragma: no cover - _walk only returns at the end or a delimiter
        raise IncompleteDatasetError(f"the dataset stops at byte {position} of {end}")
    return found


def _walk(
    data: bytes,
    position: int,
    end: int,
    implicit_vr: bool,
    wanted: frozenset[int],
    found: dict[int, RawValue] | None,
    in_item: bool,
) -> int:
    """Walk elements from ``position``; return the offset after the last one (or after the
    item delimiter when ``in_item``)."""
    while position < end:
        if position + 8 > end:
            raise IncompleteDatasetError(
                f"the bytes end inside an element header at byte {position}"
            )
        group, element = _TAG.unpack_from(data, position)
        tag = group << 16 | element
        if tag == _ITEM_END:
            if not in_item:
                raise IncompleteDatasetError(f"an item delimiter outside an item at {position}")
            return position + 8
        if group == 0xFFFE:
            raise IncompleteDatasetError(f"an unexpected item tag at byte {position}")
        vr: bytes | None = None
        if implicit_vr:
            length = _U32.unpack_from(data, position + 4)[0]
            position += 8
        else:
            vr = data[position + 4 : position + 6]
            if vr in _LONG_VRS:
                if position + 12 > end:
                    raise IncompleteDatasetError(
                        f"the bytes end inside an element header at byte {position}"
                    )
                length = _U32.unpack_from(data, position + 8)[0]
                position += 12
            else:
                length = _U16.unpack_from(data, position + 6)[0]
                position += 8
        if length == _UNDEFINED:
            # A sequence, or encapsulated pixel data, or UN holding an implicit-VR sequence.
            position = _skip_items(data, position, end, implicit_vr or vr == b"UN", tag)
            continue
        if position + length > end:
            raise IncompleteDatasetError(
                f"element ({group:04X},{element:04X}) declares {length} bytes but "
                f"{max(end - position, 0)} remain"
            )
        if found is not None and tag in wanted:
            found[tag] = RawValue(
                vr.decode("ascii", "replace") if vr is not None else None,
                data[position : position + length],
            )
        position += length
    if in_item:
        raise IncompleteDatasetError("an item of undefined length has no delimiter")
    return position


def _skip_items(data: bytes, position: int, end: int, implicit_vr: bool, owner: int) -> int:
    """Skip the items of an undefined-length value up to and including its delimiter."""
    while True:
        if position + 8 > end:
            raise IncompleteDatasetError(
                f"the sequence or pixel data ({owner >> 16:04X},{owner & 0xFFFF:04X}) has no "
                "delimiter"
            )
        group, element = _TAG.unpack_from(data, position)
        tag = group << 16 | element
        length = _U32.unpack_from(data, position + 4)[0]
        position += 8
        if tag == _SEQUENCE_END:
            return position
        if tag != _ITEM:
            raise IncompleteDatasetError(
                f"({group:04X},{element:04X}) where an item of "
                f"({owner >> 16:04X},{owner & 0xFFFF:04X}) was expected"
            )
        if length == _UNDEFINED:
            position = _walk(data, position, end, implicit_vr, frozenset(), None, in_item=True)
        elif position + length > end:
            raise IncompleteDatasetError(
                f"an item of ({owner >> 16:04X},{owner & 0xFFFF:04X}) declares {length} bytes "
                f"but {end - position} remain"
            )
        else:
            position += length
