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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_pipeline.errors import UserError
from data_pipeline.io_utils import atomic_write_json, first_line, read_json

FORMAT = "biodistill-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
LENGTH_BINS = 16
SPLITS = ("train", "eval")
MODES = ("truncate", "pack")


def length_bin(n_tokens: int, max_len: int) -> int:
    return min(LENGTH_BINS - 1, max(0, (n_tokens - 1) * LENGTH_BINS // max_len))


@dataclass(frozen=True)
class TokenizerInfo:
    name: str
    vocab_size: int
    vocab_hash: str
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    special_ids: tuple[int, ...]

    @property
    def dtype(self) -> str:
        return "uint16" if self.vocab_size <= 1 << 16 else "int32"


@dataclass
class ShardInfo:
    name: str
    samples: int
    tokens: int
    length_hist: list[int] = field(default_factory=lambda: [0] * LENGTH_BINS)
    bytes: int | None = None  # size of the tar file; None in manifests older than checksums
    sha256: str | None = None  # of the tar file; None: the shard is read unverified


@dataclass
class SplitInfo:
    shards: list[ShardInfo] = field(default_factory=list)

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.shards)


@dataclass
class Manifest:
    tokenizer: TokenizerInfo
    max_len: int
    mode: str
    eval_fraction: float
    splits: dict[str, SplitInfo]
    inputs: list[dict[str, Any]]

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
    def from_dict(cls, d: dict[str, Any], source: str = "manifest") -> Manifest:
        def get(obj: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
            if key not in obj:
                raise UserError(f"{source}: missing key '{where}{key}'")
            value = obj[key]
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise UserError(
                    f"{source}: key '{where}{key}' has {value!r}, expected {_kind_name(kind)}"
                )
            return value

        if d.get("format") != FORMAT:
            raise UserError(
                f"{source}: not a biodistill shard manifest (format={d.get('format')!r})"
            )
        if d.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{source}: format_version {d.get('format_version')!r} is not supported "
                f"(this version reads {FORMAT_VERSION})"
            )
        t = get(d, "tokenizer", dict, "")
        tokenizer = TokenizerInfo(
            name=get(t, "name", str, "tokenizer."),
            vocab_size=get(t, "vocab_size", int, "tokenizer."),
            vocab_hash=get(t, "vocab_hash", str, "tokenizer."),
            cls_id=get(t, "cls_id", int, "tokenizer."),
            sep_id=get(t, "sep_id", int, "tokenizer."),
            pad_id=get(t, "pad_id", int, "tokenizer."),
            mask_id=get(t, "mask_id", int, "tokenizer."),
            special_ids=tuple(get(t, "special_ids", list, "tokenizer.")),
        )
        mode = get(d, "mode", str, "")
        if mode not in MODES:
            raise UserError(f"{source}: key 'mode' has {mode!r}, expected one of {MODES}")
        splits = {}
        for name, s in get(d, "splits", dict, "").items():
            if name not in SPLITS:
                raise UserError(f"{source}: unknown split '{name}', expected one of {SPLITS}")
            shards = [
                ShardInfo(
                    name=get(x, "name", str, f"splits.{name}.shards[]."),
                    samples=get(x, "samples", int, f"splits.{name}.shards[]."),
                    tokens=get(x, "tokens", int, f"splits.{name}.shards[]."),
                    length_hist=list(get(x, "length_hist", list, f"splits.{name}.shards[].")),
                    bytes=_optional(x, "bytes", int, get, f"splits.{name}.shards[]."),
                    sha256=_optional(x, "sha256", str, get, f"splits.{name}.shards[]."),
                )
                for x in get(s, "shards", list, f"splits.{name}.")
            ]
            splits[name] = SplitInfo(shards=shards)
        return cls(
            tokenizer=tokenizer,
            max_len=get(d, "max_len", int, ""),
            mode=mode,
            eval_fraction=float(get(d, "eval_fraction", (int, float), "")),
            splits=splits,
            inputs=get(d, "inputs", list, ""),
        )

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


def _optional(obj: dict, key: str, kind: type, get, where: str) -> Any:
    """`obj[key]` checked like a required key when present and not null, else None."""
    return None if obj.get(key) is None else get(obj, key, kind, where)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        int: "an integer",
        float: "a number",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


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
    for role in ("cls", "sep", "pad", "mask"):
        value = getattr(tok, f"{role}_token_id", None)
        if value is None:
            raise UserError(
                f"tokenizer '{name or tok.name_or_path}': has no {role} token; a BERT-style "
                "tokenizer with [CLS], [SEP], [PAD] and [MASK] is required"
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
