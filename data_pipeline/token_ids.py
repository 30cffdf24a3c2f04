"""Token ids of record texts, as fast as the tokenizer allows and identical to tokenizing in full.

`tokenized_chunks` turns a stream of records into chunks of CHUNK records with their ids, in input
order, in-process or in a pool of worker processes. Each process holds one `TextIds`, which takes
one of two paths, both giving exactly the ids of `tok.encode(text).ids[:keep]`:

- the piece cache (`PieceCache`), for tokenizers whose ids of a text are the ids of its
  space-separated pieces laid end to end. Text is split on " " in Python and each distinct piece
  is tokenized once by the Rust tokenizer and then looked up: words repeat (Zipf), so most pieces
  cost a dict lookup, and in truncate mode nothing after the kept ids is looked at. Two rules
  (`piece_rule`): WordPiece drops the spaces (`splits_on_spaces`: the BERT family, i.e. every
  model of docs/objectives.md); byte-level BPE keeps each space in the token after it ("Ġword"),
  so a piece is tokenized with its leading space (`pieces_keep_their_space`: RoBERTa, ModernBERT,
  GPT-2), and a text where a space touches other whitespace or an end is tokenized whole;
- the prefix path, for other tokenizers (Metaspace, a custom Split regex, ...): only a prefix of
  each text is tokenized, its length learnt from the corpus (`PrefixBudget`), and the whole text
  again when the prefix came out short (`tokenize_texts`).

NOTE: the piece cache rests on a property of the tokenizer pipeline, so every batch also checks
a sample of its texts against the full Rust call and stops with an error on any difference
(BIODISTILL_TOKENIZE=plain takes the prefix path instead).
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data_pipeline.errors import UserError
from data_pipeline.records import Record

CHUNK = 1024  # records per tokenizer call / per task sent to a worker
# Truncate mode tokenizes a prefix of each text (PrefixBudget): it starts at keep * CHARS_PER_TOKEN
# characters, far above what WordPiece needs (~4.5-6 a token), then follows the corpus so that about
# FALLBACK_SHARE of the prefixes come out short of `keep` ids and the whole text is tokenized again.
CHARS_PER_TOKEN = 8
FALLBACK_SHARE = 0.05
_RATIO_WINDOW = 4096  # characters-per-token samples the budget is estimated from
# A cut point every tokenizer treats as a boundary: an ASCII whitespace that follows a non-space
# (cutting inside a whitespace run would change how byte-level BPE groups the run).
_CUT = re.compile(r"(?<=\S)[ \t\n\r]")
# Pieces the cache holds before it starts afresh: ~100-150 MB a process at PubMed's piece lengths.
PIECE_CACHE_SIZE = 500_000
# Normalizers that act on each character alone (so never across a space), and pre-tokenizers that
# split on whitespace and drop it: with these, tokenizing a text piece by piece changes nothing.
_LOCAL_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents"}
_SPLITTING_PRE_TOKENIZERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
# Byte-level BPE: normalizers that neither make, move nor remove whitespace and act on what lies
# between two spaces alone (a space is a Unicode starter: NFC/NFD stop at it).
_BYTE_LEVEL_NORMALIZERS = {"NFC", "NFD", "Lowercase"}
# A text whose spaces do not each stand alone between two non-whitespace characters: GPT-2's
# pre-tokenizer regex groups a whitespace run as a whole (`\s+(?!\S)`), so across such a run the
# pieces' pre-tokens differ from the text's. Python's \s covers at least Unicode White_Space.
_ODD_SPACING = re.compile(r"\A | \Z|\s | \s")
ENV_SWITCH = "BIODISTILL_TOKENIZE"  # "plain": never use the piece cache


# ---- the piece cache --------------------------------------------------------------------------


def splits_on_spaces(tok) -> bool:
    """Whether `tok`'s ids of any text equal the ids of its " "-separated pieces laid end to end.

    True for a WordPiece model behind a whitespace-splitting pre-tokenizer and normalizers that map
    each character on its own (a space is a Unicode starter, so even NFC/NFKC composition and
    canonical reordering stop at it), with no added token that could span a space (content with
    whitespace, or lstrip/rstrip eating the spaces around it).
    """
    spec = json.loads(tok.to_str())
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] * bool(norm)
    pres = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    added = spec.get("added_tokens") or []
    return (
        spec.get("model", {}).get("type") == "WordPiece"
        and all(n.get("type") in _LOCAL_NORMALIZERS for n in norms)
        and bool(pres)
        and all(p.get("type") in _SPLITTING_PRE_TOKENIZERS for p in pres)
        and not any(
            a.get("lstrip") or a.get("rstrip") or any(c.isspace() for c in a.get("content", ""))
            for a in added
        )
    )


def pieces_keep_their_space(tok) -> bool:
    """Whether `tok` is a byte-level BPE whose ids of a text are the ids of its pieces laid end
    to end, the first piece as it is and every later one with the space before it (" word" ->
    "Ġword"), for every text whose spaces each stand alone between two non-whitespace characters.

    Why that holds: GPT-2's pre-tokenizer regex (ByteLevel with use_regex) never puts a
    non-whitespace character and a space after it in one pre-token, and starts the next one at
    that space; BPE (without dropout) merges within a pre-token only. add_prefix_space acts on
    the first piece alone, as on the text. The normalizers allowed leave whitespace alone and stop
    at a space. An added token is found inside one piece (no whitespace in it); one that eats the
    space before it (lstrip) eats the piece's own leading space, as in the text, but one that eats
    the space after it (rstrip) would take the next piece's, so such a tokenizer is refused.
    """
    spec = json.loads(tok.to_str())
    norm, pre = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
    norms = norm.get("normalizers", []) if norm.get("type") == "Sequence" else [norm] * bool(norm)
    pres = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    model = spec.get("model") or {}
    added = spec.get("added_tokens") or []
    return (
        model.get("type") == "BPE"
        and not model.get("dropout")
        and all(n.get("type") in _BYTE_LEVEL_NORMALIZERS for n in norms)
        and len(pres) == 1
        and pres[0].get("type") == "ByteLevel"
        and pres[0].get("use_regex", True)
        and not any(
            a.get("rstrip") or any(c.isspace() for c in a.get("content", "")) for a in added
        )
    )


def piece_rule(tok) -> str | None:
    """Which piece cache rule `tok` is proven for: "words" (WordPiece: pieces without their
    spaces), "byte-level" (byte-level BPE: pieces with their leading space), or None."""
    if splits_on_spaces(tok):
        return "words"
    if pieces_keep_their_space(tok):
        return "byte-level"
    return None


def _byte_level_pieces(text: str, keep: int | None) -> list[str] | None:
    """The first `keep` (all with None) " "-separated pieces of `text`, each after the first with
    its leading space, or None when a space among them touches other whitespace or an end."""
    head = text.split(" ") if keep is None else text.split(" ", keep)[:keep]
    end = sum(map(len, head)) + len(head) - 1  # the pieces' span: what follows it cannot change
    # their ids, unless the last one ends in whitespace before the space that follows it.
    # (max: an empty first piece is a leading space, which the empty span would hide.)
    if _ODD_SPACING.search(text, 0, max(end, 1)) or end < len(text) and head[-1][-1:].isspace():
        return None
    return [head[0], *(" " + p for p in head[1:])]


class PieceCache:
    """Ids of texts from cached ids of their space-separated pieces (see `piece_rule`).

    With `byte_level`, the pieces after the first keep the space before them (that is their cache
    key too), and texts with odd spacing (_ODD_SPACING) are tokenized whole (`self.whole` counts
    them).
    """

    def __init__(self, tok, capacity: int = PIECE_CACHE_SIZE, byte_level: bool = False):
        self.tok, self.capacity, self.byte_level = tok, capacity, byte_level
        self.ids: dict[str, list[int]] = {}
        self.lookups = self.misses = self.whole = 0

    def __call__(self, texts: list[str], keep: int | None) -> list[list[int]]:
        if len(self.ids) > self.capacity:
            self.ids.clear()  # start afresh rather than track ages: frequent pieces return at once
        cache = self.ids
        if self.byte_level:
            pieces = [_byte_level_pieces(t, keep) for t in texts]
            odd = [t for t, p in zip(texts, pieces, strict=True) if p is None]
            self.whole += len(odd)
            whole = self._whole(odd, keep)
        else:
            pieces, whole = [t.split(" ") for t in texts], iter(())
        # Every piece yields at least one id unless normalization empties it, so with `keep` the
        # first `keep` pieces of a text are all it can need (the rare rest: _slow).
        head = [p if keep is None or p is None else p[:keep] for p in pieces]
        new = list(set(itertools.chain.from_iterable(h for h in head if h)).difference(cache))
        if new:
            encoded = self.tok.encode_batch_fast(new, add_special_tokens=False)
            cache.update(zip(new, (e.ids for e in encoded), strict=True))
        self.misses += len(new)
        self.lookups += sum(len(h) for h in head if h)
        out = []
        for ps, hs in zip(pieces, head, strict=True):
            if ps is None:
                out.append(next(whole))
                continue
            ids = list(itertools.chain.from_iterable(map(cache.__getitem__, hs)))
            if keep is not None:
                if len(ids) < keep < len(ps):
                    ids = self._slow(ps, keep)
                del ids[keep:]
            out.append(ids)
        return out

    def _whole(self, texts: list[str], keep: int | None) -> Iterator[list[int]]:
        """The full call's ids of `texts` (cut to `keep`), in order."""
        if not texts:
            return iter(())
        encoded = self.tok.encode_batch_fast(texts, add_special_tokens=False)
        return iter([e.ids if keep is None else e.ids[:keep] for e in encoded])

    def _slow(self, pieces: list[str], keep: int) -> list[int]:
        """Ids of a text whose first `keep` pieces gave fewer than `keep` ids, piece by piece."""
        ids: list[int] = []
        for p in pieces:
            if p not in self.ids:
                self.ids[p] = self.tok.encode(p, add_special_tokens=False).ids
                self.misses += 1
            ids += self.ids[p]
            if len(ids) >= keep:
                break
        return ids


def check_sample(tok, texts: list[str], got: list[list[int]], keep: int | None) -> None:
    """Compare the piece cache's ids of a few texts with the full Rust call; raise on a difference.

    The sample is the first text and the first non-ASCII one: the property the cache rests on
    could only fail on unusual characters.
    """
    sample = {0, next((i for i, t in enumerate(texts) if not t.isascii()), 0)}
    for i in sample:
        full = tok.encode(texts[i], add_special_tokens=False).ids
        if (full if keep is None else full[:keep]) != got[i]:
            raise RuntimeError(
                f"tokenizer piece cache gave different ids than the tokenizer for the text "
                f"starting {texts[i][:80]!r}: please report it; {ENV_SWITCH}=plain avoids the cache"
            )


# ---- the prefix path --------------------------------------------------------------------------


def prefix_end(text: str, budget: int) -> int | None:
    """Where to cut `text` to tokenize a prefix: before the first boundary at or after `budget`."""
    if len(text) <= budget:
        return None
    m = _CUT.search(text, budget)
    return m.start() if m else None


class PrefixBudget:
    """How many characters of each text truncate mode tokenizes, learnt from the texts seen so far.

    Each text with at least keep/2 ids gives a sample of characters per token (over the prefix
    tokenized, or the whole text); the budget is keep times the (1 - FALLBACK_SHARE) quantile of
    the last _RATIO_WINDOW samples, so that share of prefixes falls short and is redone in full.
    NOTE: the ids never depend on the budget (see tokenize_texts), so neither does the output:
    each worker process may learn its own.
    """

    def __init__(self, keep: int):
        self.keep = keep
        self.chars = keep * CHARS_PER_TOKEN  # until there are samples: generous, rarely short
        self._ratios = np.zeros(0)
        self.cut = self.short = 0  # texts cut to a prefix, and those of them redone in full

    def update(self, chars: list[int], counts: list[int], cut: int, short: int) -> None:
        """Learn from one batch: characters tokenized and ids found per text (before truncation)."""
        self.cut, self.short = self.cut + cut, self.short + short
        chars_a, counts_a = np.asarray(chars, np.float64), np.asarray(counts, np.float64)
        sized = counts_a * 2 >= self.keep  # short texts (a lone title) read differently
        if not sized.any():
            return
        fresh = chars_a[sized] / counts_a[sized]
        self._ratios = np.concatenate((self._ratios, fresh))[-_RATIO_WINDOW:]
        ratio = float(np.quantile(self._ratios, 1.0 - FALLBACK_SHARE))
        self.chars = max(self.keep, int(self.keep * ratio) + 1)


def ragged_offsets(seqs) -> np.ndarray:
    """Offsets of sequences laid end to end: seqs[k] spans [offsets[k], offsets[k + 1])."""
    offsets = np.zeros(len(seqs) + 1, np.int64)
    np.cumsum([len(x) for x in seqs], out=offsets[1:])
    return offsets


def flat_ids(ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Ragged id lists as (flat int32 array, offsets)."""
    offsets = ragged_offsets(ids)
    return np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(offsets[-1])), offsets


def tokenize_texts(tok, texts: list[str], keep: int | None, budget: int | PrefixBudget | None):
    """Token ids of `texts` (no special tokens) as (flat int32 array, offsets), the prefix path.

    With `keep`, each is truncated to `keep` ids, tokenizing only a prefix of about `budget`
    characters (a fixed count, or a PrefixBudget that learns from this batch) and redoing the whole
    text when the prefix came out shorter than `keep`; the ids are the same as tokenizing
    everything, since the prefix ends at a pre-token boundary.
    """
    chars = budget.chars if isinstance(budget, PrefixBudget) else budget
    if keep is None or not chars:
        ids = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    else:
        cuts = [prefix_end(t, chars) for t in texts]
        heads = [t if c is None else t[:c] for t, c in zip(texts, cuts, strict=True)]
        ids = [e.ids for e in tok.encode_batch_fast(heads, add_special_tokens=False)]
        counts = [len(x) for x in ids]
        short = [i for i, c in enumerate(cuts) if c is not None and counts[i] < keep]
        if isinstance(budget, PrefixBudget):
            n_cut = len(texts) - cuts.count(None)
            budget.update([len(h) for h in heads], counts, n_cut, len(short))
        if short:
            redo = tok.encode_batch_fast([texts[i] for i in short], add_special_tokens=False)
            for i, e in zip(short, redo, strict=True):
                ids[i] = e.ids
    if keep is not None:
        ids = [x[:keep] for x in ids]
    return flat_ids(ids)


# ---- one process's tokenizer, and the pool ----------------------------------------------------


def kept_ids(max_len: int, mode: str) -> int | None:
    """Ids a sequence keeps of its text: max_len less [CLS] and [SEP] in truncate mode, all in
    pack mode (None). NOTE: `shard` and `tokenize` must agree: it is part of the cache's key."""
    return max_len - 2 if mode == "truncate" else None


def plain_switch() -> bool:
    """Whether BIODISTILL_TOKENIZE=plain asks for the prefix path; other values are an error."""
    switch = os.environ.get(ENV_SWITCH, "")
    if switch not in ("", "plain"):
        raise UserError(f"{ENV_SWITCH}={switch!r}: expected 'plain' or unset")
    return switch == "plain"


@dataclass
class TokenizeStats:
    """What one tokenizer path did, summed over the processes that ran it; `line()` reports it."""

    path: str  # which path, in words (`path_name`)
    workers: int = 1
    texts: int = 0
    tokens: int = 0
    seconds: float = 0.0  # inside the tokenizer path, summed over processes
    whole: int = 0  # byte-level piece cache: texts with odd spacing tokenized whole

    def add(self, texts: int, tokens: int, seconds: float, whole: int) -> None:
        self.texts, self.tokens = self.texts + texts, self.tokens + tokens
        self.seconds, self.whole = self.seconds + seconds, self.whole + whole

    def line(self) -> str:
        """'tokenizer: PATH: N tokens/s a worker (...)', or "" when nothing was tokenized."""
        if not self.texts:
            return ""
        rate = self.tokens / max(self.seconds, 1e-9)
        line = (
            f"tokenizer: {self.path}: {rate:,.0f} tokens/s a worker ({self.tokens:,} tokens of "
            f"{self.texts:,} texts in {self.seconds:.1f} s, {self.workers} worker(s)"
        )
        if self.whole:
            line += f"; {self.whole:,} texts with odd spacing tokenized whole"
        return line + ")"


def path_name(tok) -> str:
    """The path TextIds takes for `tok`, in words (for the log line)."""
    if plain_switch():
        return f"full tokenizer call ({ENV_SWITCH}=plain)"
    rule = piece_rule(tok)
    if rule == "words":
        return "piece cache, WordPiece rule (pieces without their spaces)"
    if rule == "byte-level":
        return "piece cache, byte-level BPE rule (pieces with their leading space)"
    return "full tokenizer call (no piece cache rule is proven for this tokenizer)"


class TextIds:
    """Token ids of texts for one process: the piece cache where the tokenizer allows it, else
    the prefix path. Call it with a list of texts; it returns (flat int32 ids, offsets). What each
    call did is `last` (texts, tokens, seconds, texts tokenized whole), added to `stats`."""

    def __init__(self, tok, keep: int | None, stats: TokenizeStats | None = None):
        self.tok, self.keep = tok, keep
        rule = None if plain_switch() else piece_rule(tok)
        self.pieces = PieceCache(tok, byte_level=rule == "byte-level") if rule else None
        self.budget = PrefixBudget(keep) if keep is not None and self.pieces is None else None
        self.stats = stats if stats is not None else TokenizeStats(path_name(tok))
        self.last: tuple[int, int, float, int] = (0, 0, 0.0, 0)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        start, whole = time.perf_counter(), self.pieces.whole if self.pieces else 0
        if self.pieces is None:
            flat, offsets = tokenize_texts(self.tok, texts, self.keep, self.budget)
        else:
            ids = self.pieces(texts, self.keep)
            if texts:
                check_sample(self.tok, texts, ids, self.keep)
            flat, offsets = flat_ids(ids)
        whole = (self.pieces.whole if self.pieces else 0) - whole
        self.last = (len(texts), int(offsets[-1]), time.perf_counter() - start, whole)
        self.stats.add(*self.last)
        return flat, offsets


def pair_separator(tok, sep_id: int) -> list[int]:
    """The ids the tokenizer's pair template puts between two texts: [SEP] for BERT, </s> </s>
    for RoBERTa; [sep_id] when it puts none (no post-processor). Pack mode joins documents so."""
    if tok.post_processor is None:
        return [sep_id]
    a, b = (tok.encode(t, add_special_tokens=False) for t in ("a", "b"))
    if not a.ids or not b.ids:  # a vocabulary without "a" or "b": no way to read the template
        return [sep_id]
    pair = tok.post_process(a, b, add_special_tokens=True)
    # The texts' own ids are the positions not marked special (some processors set no sequence
    # ids): the first len(a) of them are a's, the next are b's.
    texts = [i for i, special in enumerate(pair.special_tokens_mask) if not special]
    end_a, start_b = texts[len(a.ids) - 1] + 1, texts[len(a.ids)]
    return pair.ids[end_a:start_b] or [sep_id]


def backend_tokenizer(hf_tok):
    """A private copy of the Rust tokenizer with no truncation or padding of its own."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


_worker: dict = {}


def _init_worker(tok_json: str, keep: int | None) -> None:
    # One core per worker: --workers is the parallelism, not rayon inside each worker.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _worker["ids"] = TextIds(Tokenizer.from_str(tok_json), keep)


def _tokenize_task(texts: list[str]):
    result = _worker["ids"](texts)
    return result, _worker["ids"].last


class ChunkTokenizer:
    """Chunks of CHUNK records with their ids, in input order: in this process (workers == 1) or
    by a pool of worker processes that lives as long as the `with` block, however many record
    streams go through `chunks`. What the tokenizer path did adds up in `stats` (the caller's, if
    given)."""

    def __init__(
        self, tok, workers: int, keep: int | None, stats: TokenizeStats | None = None
    ) -> None:
        plain_switch()  # NOTE: here, not only in the workers: an initializer's error respawns them
        self.tok, self.workers, self.keep = tok, workers, keep
        self.stats = stats if stats is not None else TokenizeStats(path_name(tok), workers)
        self._pool = None
        self._local: TextIds | None = None
        if workers == 1:
            # --workers N means N cores: no rayon threads in-process either, unless the user set it.
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    def __enter__(self) -> ChunkTokenizer:
        if self.workers > 1:
            # spawn, not fork: the parent may hold rayon or torch threads.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.workers, _init_worker, (self.tok.to_str(), self.keep))
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    def local(self) -> TextIds:
        """This process's TextIds (for a few texts, where a round trip to a worker costs more)."""
        if self._local is None:
            self._local = TextIds(self.tok, self.keep, self.stats)
        return self._local

    def chunks(self, records: Iterator[Record]):
        """Yield (chunk of records, (flat ids, offsets)) in input order."""
        chunks = iter(lambda: list(itertools.islice(records, CHUNK)), [])
        if self._pool is None:
            for chunk in chunks:
                yield chunk, self.local()([r.text for r in chunk])
            return
        # Pool.imap would read the whole input ahead into its task queue; a bounded window of
        # apply_async results keeps memory flat and still returns chunks in order.
        window: deque = deque()
        for chunk in chunks:
            task = self._pool.apply_async(_tokenize_task, ([r.text for r in chunk],))
            window.append((chunk, task))
            if len(window) >= 3 * self.workers:
                yield self._collect(*window.popleft())
        while window:
            yield self._collect(*window.popleft())

    def _collect(self, chunk: list[Record], task) -> tuple[list[Record], tuple]:
        result, last = task.get()
        self.stats.add(*last)
        return chunk, result


def tokenized_chunks(
    records: Iterator[Record],
    tok,
    workers: int,
    keep: int | None,
    stats: TokenizeStats | None = None,
):
    """Yield (chunk of records, (flat ids, offsets)) in input order, each text cut to `keep` ids;
    what the tokenizer path did adds up in `stats`."""
    with ChunkTokenizer(tok, workers, keep, stats) as tokenize:
        yield from tokenize.chunks(records)
