"""Damage the integrity checks must catch: one flipped bit, in a file or in a token id."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np


def flip_byte(path: Path, offset: int | None = None) -> bytes:
    """XOR one bit into `path` (in its middle by default); returns the original bytes."""
    data = path.read_bytes()
    at = len(data) // 2 if offset is None else offset
    path.write_bytes(data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :])
    return data


def flip_token_bit(shard: Path, vocab_size: int) -> None:
    """XOR 0x10 into the low byte of the middle token id of the middle sample: the id stays in
    the vocabulary and the tar stays well-formed, so only the checksum can tell."""
    with tarfile.open(shard) as tar:
        members = [m for m in tar.getmembers() if m.name.endswith(".input_ids.npy")]
    member = members[len(members) // 2]
    data = shard.read_bytes()
    payload = data[member.offset_data : member.offset_data + member.size]
    ids = np.load(io.BytesIO(payload))
    header = member.size - ids.nbytes
    middle = len(ids) // 2
    assert ids.dtype == np.uint16 and (int(ids[middle]) ^ 0x10) < vocab_size
    flip_byte(shard, member.offset_data + header + middle * ids.itemsize)
