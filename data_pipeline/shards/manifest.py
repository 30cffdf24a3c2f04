"""The shard manifest (DIR/manifest.json) and the tokenizer fingerprint it records.

The manifest is the contract between `data_pipeline shard` (which writes it last, listing only
complete shards) and the loader (which refuses shards made with another tokenizer). Format:

    {
      "format": "biodistill-shards", "format_version": 1,
      "tokenizer": {"name", "vocab_size", "vocab_hash", "cls_id", "sep_id", "pad_id", "mask_id",
                    "special_ids"},
      "max_len": 256, "mode": "truncate" | "pack", "dtype": "uint16" | "int32",
      "eval_fraction": 0.001,
      "splits": {"train": {"samples", "tokens", "shards": [{"name", "samples", "tokens",
                                                             "length_hist", "bytes", "sha256"}]},
                 "eval": {...}},
      "inputs": [{"path", "bytes", "sha256"}]
    }

A shard's "bytes" and "sha256" are those of its tar file as the writer finished it; the loader
compares the SHA-256 of every local shard it reads, `inspect --verify` both. They are optional, so
manifests written before they existed still load (format_version stays 1): a shard without
"sha256" is read unverified.

`tokens` counts real tokens ([CLS]/[SEP] included, no padding). `length_hist` has LENGTH_BINS
counts; bin i holds sequences with length in (i*max_len/LENGTH_BINS, (i+1)*max_len/LENGTH_BINS].
No timestamps: the same inputs give the same manifest bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from data_pipeline.errors import UserError
from data_pipeline.io_utils import atomic_write_json, first_line, read_json
from data_pipeline.schema import Float, Int, Str, validate

FORMAT = "biodistill-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LENGTH_BINS = 16
SPLITS = ("train", "eval")
MODES = ("truncate", "pack")

# NOTE: keys the schema does not know are ignored, not refused: the written file also holds what
# is derived (dtype, a split's samples and tokens), and a key added later as optional (as bytes
# and sha256 were, within format_version 1) must not make an older reader refuse the file.
_FILE = ConfigDict(extra="ignore")


def length_bin(n_tokens: int, max_len: int) -> int:
    return min(LENGTH_BINS - 1, max(0, (n_tokens - 1) * LENGTH_BINS // max_len))


@dataclass(frozen=True, config=_FILE)
class TokenizerInfo:
    name: Str = Field(description="the tokenizer's hub name or directory, as given")
    vocab_size: Int = Field(ge=1, description="entries of its vocabulary")
    vocab_hash: Str = Field(description="SHA-256 of its (token, id) pairs in id order")
    cls_id: Int = Field(ge=0, description="[CLS] id")
    sep_id: Int = Field(ge=0, description="[SEP] id")
    pad_id: Int = Field(ge=0, description="[PAD] id")
    mask_id: Int = Field(ge=0, description="[MASK] id")
    special_ids: tuple[Int, ...] = Field(description="every special token's id, sorted")

    @property
    def dtype(self) -> str:
        return "uint16" if self.vocab_size <= 1 << 16 else "int32"


@dataclass(config=_FILE)
class ShardInfo:
    name: Str = Field(description="the tar file's name in the shard directory")
    samples: Int = Field(ge=0, description="sequences in it")
    tokens: Int = Field(ge=0, description="real tokens in it ([CLS]/[SEP] in, no padding)")
    length_hist: list[Int] = Field(
        default_factory=lambda: [0] * LENGTH_BINS, description="sequences per length bin"
    )
    bytes: Int | None = Field(None, ge=0, description="the tar's size; None: an older manifest")
    sha256: Str | None = Field(None, description="the tar's SHA-256; None: read unverified")


@dataclass(config=_FILE)
class SplitInfo:
    shards: list[ShardInfo] = Field(default_factory=list, description="its shards, in order")

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)


@dataclass(config=_FILE)
class Manifest:
    tokenizer: TokenizerInfo = Field(description="the tokenizer the shards were made with")
    max_len: Int = Field(ge=2, description="tokens per sequence at most")
    mode: Literal[MODES] = Field(description="one document a sequence, or packed")
    eval_fraction: Float = Field(ge=0, le=1, description="the records' share held out for eval")
    splits: dict[Literal[SPLITS], SplitInfo] = Field(description="shards per split")
    inputs: list[dict[Str, Any]] = Field(description="the input files: path, bytes, sha256")

    @property
    def dtype(self) -> str:
        return self.tokenizer.dtype

    def to_dict(self) -> dict[str, Any]:
        tok = asdict(self.tokenizer)
        tok["special_ids"] = list(self.tokenizer.special_ids)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "tokenizer": tok,
            "max_len": self.max_len,
            "mode": self.mode,
            "dtype": self.dtype,
            "eval_fraction": self.eval_fraction,
            "splits": {
                name: {
                    "samples": split.samples,
                    "tokens": split.tokens,
                    "shards": [asdict(s) for s in split.shards],
                }
                for name, split in self.splits.items()
            },
            "inputs": self.inputs,
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, d: Any, source: str = "manifest") -> Manifest:
        """The manifest a JSON object describes, or UserError naming `source` and the key."""
        found = d.get("format") if isinstance(d, dict) else None
        if found != FORMAT:
            raise UserError(f"{source}: not a biodistill shard manifest (format={found!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{source}: format_version {d.get('format_version')!r} is not supported "
                f"(this version reads {FORMAT_VERSION})"
            )
        return validate(cls, d, root="manifest", source=source)

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Load DIR/manifest.json (or a manifest file path)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.exists():
            raise UserError(
                f"{path}: no shard manifest (run `python -m data_pipeline shard` to make one; "
                "an interrupted shard run writes none)"
            )
        return cls.from_dict(read_json(path), source=str(path))

    def check_tokenizer(self, info: TokenizerInfo, source: str = "shards") -> None:
        """Refuse shards tokenized with a different vocabulary than the run's tokenizer."""
        if (
            info.vocab_hash != self.tokenizer.vocab_hash
            or info.vocab_size != self.tokenizer.vocab_size
        ):
            raise UserError(
                f"{source}: shards were made with tokenizer '{self.tokenizer.name}' "
                f"(vocab {self.tokenizer.vocab_size}, hash {self.tokenizer.vocab_hash[:12]}), "
                f"but this run uses '{info.name}' (vocab {info.vocab_size}, "
                f"hash {info.vocab_hash[:12]}); re-shard with the run's tokenizer"
            )


def load_tokenizer(name_or_dir: str):
    """Load a fast HF tokenizer by hub name or local directory, with a one-line error on failure."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir, use_fast=True)
    except (OSError, ValueError) as e:
        raise UserError(
            f"tokenizer '{name_or_dir}': cannot load it (expected a local directory with tokenizer "
            f"files or a Hugging Face hub name): {first_line(e)}"
        ) from None
    if not getattr(tok, "is_fast", False):
        raise UserError(f"tokenizer '{name_or_dir}': a fast (Rust) tokenizer is required")
    return tok


def tokenizer_info(tok, name: str | None = None) -> TokenizerInfo:
    """Fingerprint a tokenizer: vocabulary size and a hash of its token -> id map."""
    vocab = tok.get_vocab()
    ordered = sorted(vocab.items(), key=lambda kv: (kv[1], kv[0]))
    vocab_hash = hashlib.sha256(json.dumps(ordered, ensure_ascii=False).encode()).hexdigest()
    ids = {}
    # A tokenizer without cls/sep tokens of its own opens and closes a sequence with bos/eos.
    for role, alias in (("cls", "bos"), ("sep", "eos"), ("pad", None), ("mask", None)):
        value = getattr(tok, f"{role}_token_id", None)
        if value is None and alias is not None:
            value = getattr(tok, f"{alias}_token_id", None)
        if value is None:
            raise UserError(
                f"tokenizer '{name or tok.name_or_path}': has no {role} token; a tokenizer with "
                "cls (or bos), sep (or eos), pad and mask tokens is required"
            )
        ids[role] = int(value)
    return TokenizerInfo(
        name=name or str(tok.name_or_path),
        vocab_size=len(vocab),
        vocab_hash=vocab_hash,
        cls_id=ids["cls"],
        sep_id=ids["sep"],
        pad_id=ids["pad"],
        mask_id=ids["mask"],
        special_ids=tuple(sorted(set(int(i) for i in tok.all_special_ids))),
    )
