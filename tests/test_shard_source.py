"""Reading one shard (data_pipeline/shards/reader.py): the local fast path against webdataset's.

Run: .venv/bin/pytest tests/test_shard_source.py -q
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset

from data_pipeline.errors import UserError
from data_pipeline.shards.reader import read_local_shard, read_shard, read_streamed_shard

VOCAB = 70_000  # above 2**16, so int32 ids may use the whole range the test draws from


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def random_ids(rng: np.random.Generator, dtype: str) -> np.ndarray:
    high = 60_000 if dtype == "uint16" else VOCAB
    return rng.integers(5, high, int(rng.integers(1, 300))).astype(dtype)


def write_tar(path: Path, members: list[tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT) -> None:
    """Members as data_pipeline/shards/writer.py writes them: mode 0444, uid/gid 0, mtime 0."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o444, 0
            tar.addfile(info, io.BytesIO(data))


def sample_members(n: int, dtype: str, seed: int = 0, key=lambda i: f"{i:012d}") -> list:
    rng = np.random.default_rng(seed)
    members = []
    for i in range(n):
        ids = random_ids(rng, dtype)
        meta = json.dumps({"pmid": i, "n_tokens": len(ids)}).encode()
        members += [(f"{key(i)}.input_ids.npy", npy(ids)), (f"{key(i)}.json", meta)]
    return members


def assert_same_samples(got, want) -> None:
    assert [k for k, _ in got] == [k for k, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a.dtype == b.dtype and a.flags.writeable
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["uint16", "int32"])
@pytest.mark.parametrize(
    "writer,fast_path",
    [
        ("tarfile", True),  # data_pipeline/shards/writer.py's bytes: USTAR, mtime 0
        ("TarWriter, mtime 0", True),  # tests/test_loader.py's shards
        ("TarWriter", False),  # a float mtime puts a pax header before every member
    ],
)
def test_fast_path_reads_what_webdataset_reads(tmp_path, dtype, writer, fast_path):
    path = tmp_path / "train-000000.tar"
    if writer == "tarfile":
        write_tar(path, sample_members(300, dtype))
    else:
        rng = np.random.default_rng(1)
        with webdataset.TarWriter(str(path), mtime=0 if "mtime 0" in writer else None) as w:
            for i in range(300):
                ids = random_ids(rng, dtype)
                w.write({"__key__": f"{i:012d}", "input_ids.npy": ids, "json": {"n": len(ids)}})
    slow = read_streamed_shard(str(path))
    assert len(slow) == 300
    fast = read_local_shard(str(path))
    assert (fast is not None) == fast_path
    if fast_path:
        assert_same_samples(fast, slow)
    assert_same_samples(read_shard(f"file://{path}", 300, VOCAB), slow)
    assert_same_samples(read_shard(str(path), 300, VOCAB), slow)


def test_names_with_a_ustar_prefix_meta_files_and_odd_names_group_like_webdataset(tmp_path):
    folder = "d" * 90 + "/" + "e" * 40  # over 100 bytes: stored in the USTAR prefix field
    members = sample_members(3, "uint16", key=lambda i: f"{folder}/{i:04d}")
    members += [("__meta__", b"x"), ("__index__/a.b", b"x"), ("noext", b"x"), (".hidden", b"x")]
    members += sample_members(2, "int32", seed=2, key=lambda i: f"x.{i}/k{i}")
    members += [("k.JSON", b"{}"), ("k.input_ids.npy", npy(np.array([7], np.int64)))]
    path = tmp_path / "t.tar"
    write_tar(path, members)
    fast = read_local_shard(str(path))
    assert fast is not None
    assert_same_samples(fast, read_streamed_shard(str(path)))
    want = [f"{folder}/{i:04d}" for i in range(3)] + ["x.0/k0", "x.1/k1", "k"]
    assert [k for k, _ in fast] == want


@pytest.mark.parametrize(
    "name,fmt",
    [
        ("é" * 10, tarfile.PAX_FORMAT),  # a non-ASCII name: a pax 'x' header
        ("n" * 120, tarfile.PAX_FORMAT),  # a long name without a '/': a pax 'x' header
        ("n" * 120, tarfile.GNU_FORMAT),  # the same as a GNU 'L' long-name member
    ],
)
def test_pax_and_gnu_headers_fall_back_and_read_correctly(tmp_path, name, fmt):
    members = sample_members(4, "int32") + sample_members(1, "int32", key=lambda i: name)
    path = tmp_path / "t.tar"
    write_tar(path, members, fmt)
    assert read_local_shard(str(path)) is None  # left to tarfile
    got = read_shard(str(path), 5, VOCAB)
    assert [k for k, _ in got][-1] == name
    assert_same_samples(got, read_streamed_shard(str(path)))


@pytest.mark.parametrize("what", ["a global pax header first", "a directory midway"])
def test_global_pax_headers_and_directories_fall_back(tmp_path, what):
    path = tmp_path / "t.tar"
    pax = {"comment": "x"} if "pax" in what else {}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers=pax) as tar:
        for i, (name, data) in enumerate(sample_members(2, "uint16")):
            if i == 2 and "directory" in what:
                tar.addfile(_dir("somedir"))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert read_local_shard(str(path)) is None
    assert_same_samples(read_shard(str(path), 2, VOCAB), read_streamed_shard(str(path)))


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def _shard(tmp_path: Path, n: int = 6) -> Path:
    path = tmp_path / "train-000003.tar"
    write_tar(path, sample_members(n, "uint16"))
    return path


@pytest.mark.parametrize("member", [0, 3, 11])  # the first header, a .npy's, the last .json's
@pytest.mark.parametrize("offset", [5, 130, 200])  # in the name, size and link name fields
def test_a_flipped_header_byte_is_an_error_naming_the_shard(tmp_path, member, offset):
    path = _shard(tmp_path)
    data = bytearray(path.read_bytes())
    heads = [
        i * 512 for i in range(len(data) // 512) if data[i * 512 + 257 : i * 512 + 262] == b"ustar"
    ]
    data[heads[member] + offset] ^= 0x20
    path.write_bytes(bytes(data))
    # A damaged first header goes to tarfile, which refuses the file just as it always did.
    why = "checksum" if member else "corrupt or truncated"
    with pytest.raises(UserError, match=rf"shard \S*train-000003\.tar: .*{why}"):
        read_shard(str(path), 6, VOCAB)


def test_a_truncated_shard_is_an_error_naming_the_shard(tmp_path):
    path = _shard(tmp_path)
    data = path.read_bytes()
    end = len(data.rstrip(b"\0"))  # the last member's data; the rest is end marker and padding
    cuts = [len(data) // 2 + 100, 512 * 5 + 17, end, -(-end // 512) * 512 + 512, 100]
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(UserError, match=r"shard \S*train-000003\.tar: "):
            read_shard(str(path), 6, VOCAB)
    path.write_bytes(data[: -(-end // 512) * 512 + 1024])
    assert len(read_shard(str(path), 6, VOCAB)) == 6  # both end blocks, no record padding: fine


def test_bad_samples_give_the_slow_paths_messages(tmp_path):
    path = tmp_path / "s.tar"
    cases = [
        ([("a.json", b"{}")], "sample a has no input_ids.npy"),
        ([("a.input_ids.npy", npy(np.zeros((2, 3), np.int32)))], "not 1-D token ids"),
        ([("a.input_ids.npy", npy(np.zeros(3, np.float32)))], "not 1-D token ids"),
        ([("a.input_ids.npy", npy(np.zeros(0, np.int32)))], "not 1-D token ids"),
        ([("a.input_ids.npy", npy(np.arange(9, dtype=np.int32))[:-4])], "corrupt or truncated"),
        ([("a.input_ids.npy", b"not an npy file")], "corrupt or truncated"),
        ([("a.input_ids.npy", npy(np.array([VOCAB], np.int32)))], "beyond the vocabulary"),
        ([("a.input_ids.npy", npy(np.array([3], np.int32)))] * 2, "duplicate file name"),
        (sample_members(2, "int32"), "holds 2 samples but the manifest lists 1"),
    ]
    for members, message in cases:
        write_tar(path, members)
        for url in (str(path), f"pipe:cat {path}"):  # the fast path and webdataset's
            with pytest.raises(UserError, match=rf"shard .*s\.tar: .*{message}"):
                read_shard(url, 1, VOCAB)


def test_missing_file_and_not_a_tar(tmp_path):
    with pytest.raises(UserError, match=r"gone\.tar: file not found"):
        read_shard(str(tmp_path / "gone.tar"), 1, VOCAB)
    (tmp_path / "x.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(UserError, match=r"x\.tar: corrupt or truncated"):
        read_shard(str(tmp_path / "x.tar"), 1, VOCAB)
