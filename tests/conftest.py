"""Shared fixtures: generated PubMed corpora and a WordPiece tokenizer trained on them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from data_pipeline.demo.synth import generate_corpus, train_wordpiece

# The tests of the bf16 path keep bf16 on this CPU (trainer/config/ds_json.py: for_device); spawned
# ranks and subprocesses inherit it.
os.environ.setdefault("BIODISTILL_CPU_BF16", "1")


def pytest_collection_modifyitems(items: list) -> None:
    """The tests marked slow first (in their order, then the rest in theirs): under `make test`'s
    two workers a minutes-long test that starts last keeps one worker busy after the other has
    finished everything else."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    """About 600 citations in 3 baseline files and 1 update file (revisions and deletions)."""
    return generate_corpus(tmp_path_factory.mktemp("xml"), n_articles=600, n_files=3, seed=7)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, small_corpus) -> Path:
    """A cased BERT-style WordPiece tokenizer (vocab 2000) trained on the small corpus."""
    out = tmp_path_factory.mktemp("tokenizer")
    texts = [f"{a.expected_title} {a.expected_abstract}" for a in small_corpus.expected.values()]
    train_wordpiece(texts, out, vocab_size=2000)
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, small_corpus, tokenizer_dir) -> Path:
    """Token shards of the small corpus at max_len 64, 32 samples a shard (trainer tests)."""
    from data_pipeline.extract import run_extract
    from data_pipeline.shards.writer import run_shard

    root = tmp_path_factory.mktemp("tiny")
    run_extract([str(f) for f in small_corpus.files], str(root / "records"), progress=False)
    run_shard(
        [str(root / "records")],
        str(tokenizer_dir),
        str(root / "shards"),
        max_len=64,
        eval_fraction=0.1,
        samples_per_shard=32,
        progress=False,
    )
    return root / "shards"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: with intra-op threads on a busy 2-core machine every op pays a parallel-region
    barrier (milliseconds instead of microseconds). Restored for the other modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_disk(tmp_path):
    """A factory of small file systems: `small_disk("96k")` mounts a tmpfs of that size and
    returns its path; `small_disk.resize(path, "1m")` makes room (the files stay). A full disk is
    only real on a real file system, so this needs root: the tests skip with the reason
    otherwise. Unmounted at the end of the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        path = tmp_path / f"disk{len(mounted)}"
        path.mkdir()
        made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
        if made.returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(path)
        return path

    def resize(path: Path, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

    mount.resize = resize
    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)
