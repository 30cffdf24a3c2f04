"""Streaming parser for NLM PubMed XML (baseline and update files) into plain-text records.

One record per PubmedArticle, built the way the paper built its corpus:

- title: MedlineCitation/Article/ArticleTitle, all text content (inline markup such as <i>, <sup>,
  MathML keeps its text), whitespace collapsed, and the square brackets NLM puts around translated
  titles removed ("[Title in English]." -> "Title in English."), only when the "[" at position 0
  matches the final "]" ("[A] and [B]" stays as it is);
- abstract: the MedlineCitation/Article/Abstract/AbstractText sections in order (never
  OtherAbstract), each section's text without its Label, joined with one space;
- pmid, version (PMID Version attribute, default 1), year (PubDate/Year, else the first 4-digit
  year of PubDate/MedlineDate, else null), journal (Journal/Title, else null).

Memory stays constant whatever the file size: `xml.etree.ElementTree.iterparse` builds one
PubmedArticle at a time, and each is cleared (and detached from the root) before the next is read.
File-level problems (truncated gzip, not XML, not PubMed XML) raise `PubmedFormatError` naming the
file; record-level problems are yielded as `Skip` items so the caller can count them.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple
from xml.etree import ElementTree as ET
from xml.parsers import expat

from data_pipeline.errors import UserError

# Bump when the text a record gets changes, so completed parts of earlier runs are redone.
PARSER_VERSION = 1
# PMIDs index numpy arrays during update resolution; real ones are below 10^8, so anything beyond
# int32 is corrupt data, not a citation.
MAX_PMID = 2**31 - 1
MAX_VERSION = 2**15 - 1
_GZIP_MAGIC = b"\x1f\x8b"
_YEAR = re.compile(r"(?<!\d)\d{4}(?!\d)")


class PubmedFormatError(UserError):
    """A whole file cannot be read as PubMed XML; the message names the file."""


class Skip(NamedTuple):
    """A PubmedArticle (or book article, or deleted PMID) that yields no record, and why."""

    reason: str
    pmid: int | str | None


class Deletions(NamedTuple):
    """The valid PMIDs of one DeleteCitation element."""

    pmids: list[int]


Item = dict | Skip | Deletions


def normalize_space(text: str) -> str:
    return " ".join(text.split())


def element_text(elem: ET.Element | None) -> str:
    """All text inside `elem` (inline markup included), whitespace collapsed; "" for None."""
    if elem is None:
        return ""
    return normalize_space("".join(elem.itertext()))


def clean_title(title: str) -> str:
    """Remove the brackets NLM puts around a translated title, keeping a final ".".

    Only when the "[" at position 0 closes at the very last "]" (optionally followed by "."):
    "[A] and [B]" has its first bracket closed early, so it is left alone.
    """
    if not title.startswith("["):
        return title
    tail = "." if title.endswith("].") else ""
    body = title[: len(title) - len(tail)]
    if not body.endswith("]"):
        return title
    depth = 0
    for i, ch in enumerate(body):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                if i != len(body) - 1:
                    return title
                break
    if depth != 0:
        return title
    return normalize_space(body[1:-1]) + tail


def _parse_pmid(pmid_el: ET.Element | None) -> int | Skip:
    if pmid_el is None or not (pmid_el.text or "").strip():
        return Skip("missing_pmid", None)
    raw = pmid_el.text.strip()
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) <= MAX_PMID:
        return Skip("bad_pmid", raw)
    return int(raw)


def _parse_year(pub_date: ET.Element | None) -> int | None:
    if pub_date is None:
        return None
    for tag in ("Year", "MedlineDate"):
        match = _YEAR.search(pub_date.findtext(tag) or "")
        if match:
            return int(match.group())
    return None


def parse_article(
    article: ET.Element, keep_no_abstract: bool = False, keep_empty: bool = False
) -> dict | Skip:
    """Turn one complete <PubmedArticle> element into a record dict, or a Skip saying why not.

    `keep_empty` also returns citations with neither title nor abstract text (extract needs every
    citation for update resolution and drops those afterwards).
    """
    citation = article.find("MedlineCitation")
    if citation is None:
        return Skip("missing_pmid", None)
    pmid = _parse_pmid(citation.find("PMID"))
    if isinstance(pmid, Skip):
        return pmid
    raw_version = (citation.find("PMID").get("Version") or "1").strip()
    if (
        not (raw_version.isascii() and raw_version.isdigit())
        or not 0 < int(raw_version) <= MAX_VERSION
    ):
        return Skip("bad_version", pmid)
    art = citation.find("Article")
    title_el = art.find("ArticleTitle") if art is not None else None
    if title_el is None:
        return Skip("no_title", pmid)
    title = clean_title(element_text(title_el))
    sections = (element_text(s) for s in art.iterfind("Abstract/AbstractText"))
    abstract = " ".join(s for s in sections if s)
    if not abstract and not keep_no_abstract:
        return Skip("no_abstract", pmid)
    if not abstract and not title and not keep_empty:
        return Skip("empty_text", pmid)
    journal = art.find("Journal")
    journal_title = element_text(journal.find("Title")) if journal is not None else ""
    pub_date = journal.find("JournalIssue/PubDate") if journal is not None else None
    return {
        "pmid": pmid,
        "version": int(raw_version),
        "title": title,
        "abstract": abstract,
        "year": _parse_year(pub_date),
        "journal": journal_title or None,
    }


def _deletions(elem: ET.Element) -> Iterator[Item]:
    valid = []
    for pmid_el in elem.iterfind("PMID"):
        pmid = _parse_pmid(pmid_el)
        if isinstance(pmid, Skip):
            yield Skip("bad_delete_pmid", pmid.pmid)
        else:
            valid.append(pmid)
    yield Deletions(valid)


def _open(path: Path):
    # Sniff the magic bytes rather than trust the suffix: a renamed plain file still reads.
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


class PubmedReader:
    """Iterate over one PubMed XML file (.xml or .xml.gz): yields record dicts, Skip, Deletions.

    NOTE: every yielded item is built from an element that has already been cleared and detached
    from `root`, so `root` has no children at any yield; that is what keeps memory constant.
    """

    def __init__(
        self, path: str | os.PathLike, keep_no_abstract: bool = False, keep_empty: bool = False
    ):
        self.path = Path(path)
        self.keep_no_abstract = keep_no_abstract
        self.keep_empty = keep_empty
        self.root: ET.Element | None = None

    def __iter__(self) -> Iterator[Item]:
        try:
            with _open(self.path) as f:
                yield from self._events(f)
        except EOFError:
            raise PubmedFormatError(
                f"{self.path}: truncated gzip stream (file incomplete?)"
            ) from None
        except (gzip.BadGzipFile, zlib.error) as e:
            raise PubmedFormatError(f"{self.path}: corrupt gzip data ({e})") from None
        except ET.ParseError as e:
            line = e.position[0]
            msg = expat.ErrorString(e.code) if e.code else str(e)
            raise PubmedFormatError(f"{self.path}: XML parse error at line {line}: {msg}") from None

    def _events(self, f) -> Iterator[Item]:
        # "start" events are only needed to grab the root; the rest cost little next to parsing.
        for event, elem in ET.iterparse(f, events=("start", "end")):
            if event == "start":
                if self.root is None:
                    self.root = elem
                    if elem.tag != "PubmedArticleSet":
                        raise PubmedFormatError(
                            f"{self.path}: not PubMed XML (root element <{elem.tag}>, "
                            "expected <PubmedArticleSet>)"
                        )
                continue
            tag = elem.tag
            if tag == "PubmedArticle":
                items: list[Item] = [parse_article(elem, self.keep_no_abstract, self.keep_empty)]
            elif tag == "PubmedBookArticle":
                pmid = _parse_pmid(elem.find("BookDocument/PMID"))
                items = [Skip("book_article", None if isinstance(pmid, Skip) else pmid)]
            elif tag == "DeleteCitation":
                items = list(_deletions(elem))
            else:
                continue
            elem.clear()
            self.root.clear()
            yield from items


def iter_pubmed(path: str | os.PathLike, keep_no_abstract: bool = False) -> Iterator[Item]:
    """Records (dicts), Skip and Deletions items of one PubMed XML file, in file order."""
    return iter(PubmedReader(path, keep_no_abstract))
