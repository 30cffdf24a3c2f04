"""Tests for `python -m data_pipeline extract` (data_pipeline/pubmed.py, data_pipeline/extract.py).

    .venv/bin/pytest tests/test_extract.py -q

Fixtures are hand-written PubMed XML in the NLM schema, written into tmp_path.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from data_pipeline import extract
from data_pipeline.errors import UserError
from data_pipeline.extract import add_arguments, main, resolve_updates, run_extract
from data_pipeline.pubmed import PubmedReader, clean_title, iter_pubmed

HEADER = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" '
    '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">\n'
)
MML = 'xmlns:mml="http://www.w3.org/1998/Math/MathML"'


def article(
    pmid,
    title="A title.",
    abstract="Some text.",
    version=1,
    date="<Year>2019</Year>",
    journal="Journal of Tests",
    pmid_xml=None,
    extra="",
    refs="",
) -> str:
    """One <PubmedArticle>; `abstract` is raw inner XML of <Abstract>, or None for no Abstract.

    `extra` goes at the end of MedlineCitation (OtherAbstract), `refs` at the end of PubmedData.
    """
    if abstract is not None and "<AbstractText" not in abstract:
        abstract = f"<AbstractText>{abstract}</AbstractText>"
    abstract_xml = "" if abstract is None else f"<Abstract>{abstract}</Abstract>"
    title_xml = "" if title is None else f"<ArticleTitle>{title}</ArticleTitle>"
    pmid_xml = f'<PMID Version="{version}">{pmid}</PMID>' if pmid_xml is None else pmid_xml
    return (
        f'<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM">{pmid_xml}'
        f'<Article PubModel="Print"><Journal><ISSN IssnType="Print">0000-0000</ISSN>'
        f'<JournalIssue CitedMedium="Print"><Volume>1</Volume><PubDate>{date}</PubDate>'
        f"</JournalIssue><Title>{journal}</Title></Journal>{title_xml}{abstract_xml}"
        f'<AuthorList CompleteYN="Y"><Author><LastName>Doe</LastName></Author></AuthorList>'
        f"</Article>{extra}</MedlineCitation><PubmedData><PublicationStatus>ppublish"
        f'</PublicationStatus><ArticleIdList><ArticleId IdType="pubmed">{pmid}</ArticleId>'
        f"</ArticleIdList>{refs}</PubmedData></PubmedArticle>"
    )


def deletion(*pmids) -> str:
    return (
        "<DeleteCitation>"
        + "".join(f'<PMID Version="1">{p}</PMID>' for p in pmids)
        + ("</DeleteCitation>")
    )


def write(path: Path, *items: str) -> Path:
    data = (HEADER + "<PubmedArticleSet>\n" + "\n".join(items) + "\n</PubmedArticleSet>\n").encode()
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)
    return path


def records(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl.gz"))}


def test_text_is_built_as_in_the_paper(tmp_path):
    structured = (
        '<AbstractText Label="BACKGROUND" NlmCategory="BACKGROUND">Levels of CO<sub>2</sub>\n'
        "   rose.</AbstractText>"
        '<AbstractText Label="RESULTS" NlmCategory="RESULTS">We found <i>BRCA1</i> at 10<sup>-5'
        f"</sup> M where <mml:math {MML}><mml:mi>x</mml:mi><mml:mo>=</mml:mo><mml:mn>2</mml:mn>"
        "</mml:math> held.</AbstractText><AbstractText/>"
        "<CopyrightInformation>(c) 2019 Someone.</CopyrightInformation>"
    )
    other = '<OtherAbstract Type="Publisher" Language="fre"><AbstractText>Non.</AbstractText>'
    f = write(
        tmp_path / "pubmed26n0001.xml",
        article(
            11,
            "Role of <i>TP53</i> in\n  cancer.",
            structured,
            version=2,
            extra=other + "</OtherAbstract>",
        ),
        article(
            12,
            "[Title in English].",
            "Text.",
            date="<MedlineDate>1998 Dec-1999 Jan</MedlineDate>",
            journal="",
        ),
        article(13, "[A] and [B]", "Text.", date=""),
    )
    recs = list(iter_pubmed(f))
    assert recs[0] == {
        "pmid": 11,
        "version": 2,
        "title": "Role of TP53 in cancer.",
        "abstract": "Levels of CO2 rose. We found BRCA1 at 10-5 M where x=2 held.",
        "year": 2019,
        "journal": "Journal of Tests",
    }
    assert recs[1]["title"] == "Title in English." and recs[1]["year"] == 1998
    assert recs[1]["journal"] is None and recs[1]["version"] == 1
    assert recs[2]["title"] == "[A] and [B]" and recs[2]["year"] is None


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("[Title in English].", "Title in English."),
        ("[Title in English]", "Title in English"),
        ("[Effect of [18F]FDG uptake].", "Effect of [18F]FDG uptake."),
        ("[A] and [B]", "[A] and [B]"),
        ("[A] and [B].", "[A] and [B]."),
        ("[Unclosed title.", "[Unclosed title."),
        ("Plain [bracketed] title.", "Plain [bracketed] title."),
        ("[Trailing] text]", "[Trailing] text]"),
    ],
)
def test_clean_title(raw, clean):
    assert clean_title(raw) == clean


def test_no_abstract_skipped_unless_asked(tmp_path):
    f = write(
        tmp_path / "pubmed26n0001.xml",
        article(1),
        article(2, abstract=None),
        article(3, abstract="<AbstractText>  </AbstractText>"),
    )
    rep = run_extract([str(f)], str(tmp_path / "a"), progress=False)
    assert [r["pmid"] for r in records(tmp_path / "a" / "pubmed26n0001.jsonl.gz")] == [1]
    assert rep["skipped"] == {"no_abstract": 2} and rep["records_in"] == 3
    rep = run_extract([str(f)], str(tmp_path / "b"), keep_no_abstract=True, progress=False)
    recs = records(tmp_path / "b" / "pubmed26n0001.jsonl.gz")
    assert [(r["pmid"], r["abstract"]) for r in recs] == [(1, "Some text."), (2, ""), (3, "")]
    assert rep["skipped"] == {} and rep["keep_no_abstract"] is True


def make_update_corpus(d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    return [
        write(
            d / "pubmed26n0001.xml",
            article(1, "A1."),
            article(2, "B1."),
            article(3, "C1."),
            article(4, "D1."),
            article(6, "F2.", version=2),
        ),
        write(d / "pubmed26n0002.xml", article(5, "E1."), article(8, "H1.")),
        write(
            d / "pubmed26n0003.xml.gz",
            article(2, "B1 revised."),  # same version, later occurrence wins
            article(3, "C2.", version=2),  # higher version wins
            article(6, "F1."),  # lower version loses to the baseline's version 2
            article(7, "G1."),
            article(8, "H2."),  # deleted by this same file's DeleteCitation
            deletion(4, 5, 8, 999),
        ),
        write(d / "pubmed26n0004.xml.gz", article(4, "D again."), article(3, "C1 late.")),
    ]


def test_updates_newest_version_wins_and_deletions_apply(tmp_path):
    make_update_corpus(tmp_path / "xml")
    out = tmp_path / "out"
    rep = run_extract([str(tmp_path / "xml")], str(out), progress=False)
    got = {n: [(r["pmid"], r["title"]) for r in records(out / n)] for n in outputs(out)}
    assert got == {
        "pubmed26n0001.jsonl.gz": [(1, "A1."), (6, "F2.")],
        "pubmed26n0002.jsonl.gz": [],
        "pubmed26n0003.jsonl.gz": [(2, "B1 revised."), (3, "C2."), (7, "G1.")],
        "pubmed26n0004.jsonl.gz": [(4, "D again.")],
    }
    assert (rep["records_in"], rep["records_out"]) == (14, 6)
    assert (rep["duplicates"], rep["deletions"], rep["deleted"]) == (4, 4, 4)
    per_file = {f["name"]: (f["records_out"], f["superseded"], f["deleted"]) for f in rep["files"]}
    assert per_file == {
        "pubmed26n0001.xml": (2, 2, 1),
        "pubmed26n0002.xml": (0, 0, 2),
        "pubmed26n0003.xml.gz": (3, 1, 1),
        "pubmed26n0004.xml.gz": (1, 1, 0),
    }
    assert json.loads((out / "report.json").read_text()) == rep


def test_revision_without_abstract_removes_the_citation(tmp_path):
    # The newer record wins the update even though it has no abstract; the stale baseline text
    # with an abstract must not survive, and --keep-no-abstract keeps the newer title-only record.
    write(tmp_path / "pubmed26n0001.xml", article(1, title="Old."), article(2))
    write(tmp_path / "pubmed26n0002.xml", article(1, title="New.", abstract=None))
    rep = run_extract([str(tmp_path)], str(tmp_path / "out"), progress=False)
    assert [r["pmid"] for r in records(tmp_path / "out" / "pubmed26n0001.jsonl.gz")] == [2]
    assert records(tmp_path / "out" / "pubmed26n0002.jsonl.gz") == []
    assert rep["skipped"] == {"no_abstract": 1} and rep["duplicates"] == 1
    run_extract([str(tmp_path)], str(tmp_path / "kept"), keep_no_abstract=True, progress=False)
    [kept] = records(tmp_path / "kept" / "pubmed26n0002.jsonl.gz")
    assert (kept["pmid"], kept["title"], kept["abstract"]) == (1, "New.", "")


def test_rerun_rewrites_no_unchanged_output(tmp_path):
    write(tmp_path / "pubmed26n0001.xml", article(1), article(2))
    write(tmp_path / "pubmed26n0002.xml", article(2, title="Revised."))
    out = tmp_path / "out"
    run_extract([str(tmp_path)], str(out), progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl.gz")}
    run_extract([str(tmp_path)], str(out), progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.jsonl.gz")} == stamps
    # A new update file changes the keep mask of an earlier file: that output is rewritten.
    write(tmp_path / "pubmed26n0003.xml", deletion(1))
    run_extract([str(tmp_path)], str(out), progress=False)
    assert records(out / "pubmed26n0001.jsonl.gz") == []


def test_resolution_matches_sequential_rule():
    rng = random.Random(0)
    files = []
    for _ in range(6):
        n = rng.randint(0, 40)
        pm = np.array([rng.randint(1, 30) for _ in range(n)], np.int64)
        ver = np.array([rng.randint(1, 3) for _ in range(n)], np.int64)
        dels = np.array(rng.sample(range(1, 35), rng.randint(0, 4)), np.int32)
        files.append((pm, ver, dels))
    winners: dict[int, tuple[int, int, int]] = {}  # pmid -> (version, file, record)
    for f, (pm, ver, dels) in enumerate(files):
        for i, (p, v) in enumerate(zip(pm.tolist(), ver.tolist(), strict=True)):
            if p not in winners or v >= winners[p][0]:
                winners[p] = (v, f, i)
        for p in dels.tolist():
            winners.pop(p, None)
    expected = {(f, i) for _, f, i in winners.values()}
    masks = list(resolve_updates(files.__getitem__, len(files), 31))
    got = {(f, i) for f, (keep, _) in enumerate(masks) for i in np.flatnonzero(keep).tolist()}
    assert got == expected


def test_output_independent_of_argument_order_and_workers(tmp_path):
    paths = [str(p) for p in make_update_corpus(tmp_path / "xml")]
    a = run_extract(paths, str(tmp_path / "a"), workers=1, progress=False)
    b = run_extract(paths[::-1], str(tmp_path / "b"), workers=2, progress=False)
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b") and len(outputs(tmp_path / "a")) == 4
    assert a == b
    assert (tmp_path / "a" / "report.json").read_bytes() == (
        tmp_path / "b" / "report.json"
    ).read_bytes()
    for data in outputs(tmp_path / "a").values():
        assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0: same bytes on every run


def test_resume_redoes_only_incomplete_or_changed_parts(tmp_path, monkeypatch):
    make_update_corpus(tmp_path / "xml")
    out = tmp_path / "out"
    first = run_extract([str(tmp_path / "xml")], str(out), progress=False)
    before = outputs(out)
    parts = out / ".parts"
    # A crash mid-file: the marker never got written and a temp file was left behind.
    (parts / "pubmed26n0002.index.npz").unlink()
    (parts / ".pubmed26n0002.part.gz.x1y2.tmp").write_bytes(b"half a file")
    seen = []
    real = extract.extract_part
    monkeypatch.setattr(extract, "extract_part", lambda task: seen.append(task[0]) or real(task))
    assert run_extract([str(tmp_path / "xml")], str(out), progress=False) == first
    assert [Path(p).name for p in seen] == ["pubmed26n0002.xml"]
    assert outputs(out) == before and not list(parts.glob("*.tmp"))
    # A re-downloaded input (different size or mtime) is parsed again; the others are reused.
    seen.clear()
    write(tmp_path / "xml" / "pubmed26n0001.xml", article(1, "A1 fixed."), article(2, "B1."))
    rep = run_extract([str(tmp_path / "xml")], str(out), progress=False)
    assert [Path(p).name for p in seen] == ["pubmed26n0001.xml"]
    assert [r["title"] for r in records(out / "pubmed26n0001.jsonl.gz")] == ["A1 fixed."]
    assert rep["records_in"] == 11


def test_reader_keeps_the_tree_empty(tmp_path):
    refs = "".join(f"<Reference><Citation>Ref {i} et al.</Citation></Reference>" for i in range(40))
    refs = f"<ReferenceList>{refs}</ReferenceList>"
    n = 3000
    f = write(tmp_path / "big.xml", *(article(i + 1, refs=refs) for i in range(n)))
    reader = PubmedReader(f)
    count = 0
    for rec in reader:
        count += 1
        # NOTE: a root that kept its children would grow with every record of the file.
        assert len(reader.root) == 0 and rec["pmid"] == count
    assert count == n
    tracemalloc.start()
    try:
        for _ in PubmedReader(f):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Without clearing the 9 MB file's tree takes ~50 MB; cleared, ~0.25 MB (parser buffers).
    assert f.stat().st_size > 8_000_000 and peak < 1_000_000, peak


def test_malformed_records_are_counted_with_file_and_pmid(tmp_path):
    book = (
        '<PubmedBookArticle><BookDocument><PMID Version="1">555</PMID>'
        "<ArticleTitle>Chapter</ArticleTitle></BookDocument></PubmedBookArticle>"
    )
    f = write(
        tmp_path / "pubmed26n0007.xml",
        article(1),
        article(2, pmid_xml=""),
        article(3, pmid_xml='<PMID Version="1">12a</PMID>'),
        article(4, title=None),
        article(5, title="", abstract=None),
        article(6, version="x"),
        *(article(100 + i, abstract=None) for i in range(105)),
        book,
        deletion("abc"),
    )
    rep = run_extract([str(f)], str(tmp_path / "out"), progress=False)
    assert rep["skipped"] == {
        "bad_delete_pmid": 1,
        "bad_pmid": 1,
        "bad_version": 1,
        "book_article": 1,
        "missing_pmid": 1,
        "no_abstract": 106,
        "no_title": 1,
    }
    assert rep["records_in"] == 112 and rep["records_out"] == 1
    examples = {(e["reason"], e["pmid"]) for e in rep["skipped_examples"]}
    assert examples >= {("missing_pmid", None), ("bad_pmid", "12a"), ("no_title", 4)}
    assert examples >= {("book_article", 555), ("bad_delete_pmid", "abc"), ("bad_version", 6)}
    assert {e["file"] for e in rep["skipped_examples"]} == {"pubmed26n0007.xml"}
    assert sum(e["reason"] == "no_abstract" for e in rep["skipped_examples"]) == 100
    kept = run_extract([str(f)], str(tmp_path / "k"), keep_no_abstract=True, progress=False)
    assert kept["skipped"]["empty_text"] == 1 and kept["records_out"] == 106


def test_bad_files_fail_the_run_but_keep_good_parts(tmp_path, monkeypatch):
    d = tmp_path / "xml"
    d.mkdir()
    write(d / "pubmed26n0001.xml.gz", article(1))
    bad = write(d / "pubmed26n0002.xml.gz", *(article(i) for i in range(2, 400)))
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    write(d / "pubmed26n0003.xml", article(3))
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"pubmed26n0002\.xml\.gz: truncated gzip stream"):
        run_extract([str(d)], str(out), workers=2, progress=False)
    assert sorted(p.name for p in (out / ".parts").glob("*.npz")) == [
        "pubmed26n0001.index.npz",
        "pubmed26n0003.index.npz",
    ]
    assert not (out / "report.json").exists() and not outputs(out)
    seen = []
    real = extract.extract_part
    monkeypatch.setattr(extract, "extract_part", lambda task: seen.append(task[0]) or real(task))
    rep = run_extract([str(d)], str(out), skip_bad_files=True, progress=False)
    assert [Path(p).name for p in seen] == ["pubmed26n0002.xml.gz"]  # the good parts are reused
    assert rep["bad_files"] == ["pubmed26n0002.xml.gz"] and rep["records_out"] == 2
    assert set(outputs(out)) == {"pubmed26n0001.jsonl.gz", "pubmed26n0003.jsonl.gz"}
    entry = rep["files"][1]
    assert entry["status"] == "error" and "truncated gzip" in entry["error"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b'<?xml version="1.0"?>\n<foo><bar/></foo>', r"not PubMed XML \(root element <foo>"),
        (b"this is not xml\n", r"XML parse error at line 1: "),
        (b"<PubmedArticleSet><PubmedArticle>\n<Medline", r"XML parse error at line 2: "),
        (b"\x1f\x8bnot really gzip", r"corrupt gzip data"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, content, message):
    good = write(tmp_path / "pubmed26n0001.xml", article(1))
    (tmp_path / "pubmed26n0009.xml").write_bytes(content)
    with pytest.raises(UserError, match=r"pubmed26n0009\.xml: " + message):
        run_extract([str(tmp_path)], str(tmp_path / "out"), progress=False)
    assert good.exists() and (tmp_path / "out" / ".parts" / "pubmed26n0001.index.npz").exists()


def test_stale_outputs_of_a_previous_run_are_removed(tmp_path):
    a = write(tmp_path / "pubmed26n0001.xml", article(1))
    b = write(tmp_path / "pubmed26n0002.xml", article(2))
    out = tmp_path / "out"
    run_extract([str(a), str(b)], str(out), progress=False)
    (out / "notes.jsonl.gz").write_bytes(b"not ours")
    rep = run_extract([str(a)], str(out), progress=False)
    assert set(outputs(out)) == {"pubmed26n0001.jsonl.gz", "notes.jsonl.gz"}
    assert [f["name"] for f in rep["files"]] == ["pubmed26n0001.xml"]


def test_input_and_output_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("nothing here")
    with pytest.raises(UserError, match=r"no PubMed XML files \(\.xml, \.xml\.gz\) found in"):
        run_extract([str(tmp_path / "empty")], str(tmp_path / "out"), progress=False)
    f = write(tmp_path / "pubmed26n0001.xml", article(1))
    blocker = tmp_path / "a_file"
    blocker.write_text("a regular file, so nothing can be created under it, even by root")
    with pytest.raises(UserError, match="not writable"):
        run_extract([str(f)], str(blocker / "out"), progress=False)
    with pytest.raises(UserError, match="--workers"):
        run_extract([str(f)], str(tmp_path / "out"), workers=0, progress=False)


def test_cli_entry_and_progress(tmp_path, capsys):
    f = write(tmp_path / "pubmed26n0001.xml", article(1), article(2))
    parser = argparse.ArgumentParser()
    add_arguments(parser.add_subparsers(dest="command").add_parser("extract"))
    args = parser.parse_args(["extract", "--input", str(f), "--output", str(tmp_path / "out")])
    assert (args.workers, args.keep_no_abstract, args.skip_bad_files) == (1, False, False)
    assert main(args) == 0
    err = capsys.readouterr().err
    # counts, rate and ETA (data_pipeline/progress.py), then the file's own figures
    line = r"extract: file 1/1 \| \S+ files/s \| ETA 00:00 \| pubmed26n0001\.xml: 2 records "
    line += r"\(\d+\.\d s\)"
    assert re.search(line, err), err
    assert main(args) == 0
    assert "reusing 1 of 1 completed parts" in capsys.readouterr().err


def test_matches_the_generated_corpus(small_corpus, tmp_path):
    # Cross-check against data_pipeline.demo.synth, which records the text each citation must yield.
    run_extract(
        [str(p) for p in small_corpus.files], str(tmp_path), keep_no_abstract=True, progress=False
    )
    got = {r["pmid"]: r for p in sorted(tmp_path.glob("*.jsonl.gz")) for r in records(p)}
    assert set(got) == set(small_corpus.expected)
    for pmid, a in small_corpus.expected.items():
        r = got[pmid]
        assert (r["title"], r["abstract"], r["version"]) == (
            a.expected_title,
            a.expected_abstract,
            a.version,
        )
        assert (r["year"], r["journal"]) == (a.year, a.journal)


@pytest.mark.parametrize(
    "size, workers, parsed",
    [("96k", 2, False), ("232k", 1, True)],
    ids=["parsing-2-workers", "writing-outputs"],
)
def test_full_disk_stops_with_one_line_and_the_rerun_finishes(
    small_corpus, small_disk, tmp_path, capsys, size, workers, parsed
):
    """The disk fills while parsing (the parts, ~170 kB) or while writing the outputs (~140 kB
    more): one line, exit 2, no report.json (so shard refuses the directory), no temp file, only
    complete files; with room made, the same command finishes with the clean run's outputs."""
    from data_pipeline.__main__ import main as cli
    from data_pipeline.records import resolve_inputs

    inputs = [str(f) for f in small_corpus.files]
    disk = small_disk(size)
    out = disk / "records"
    assert (
        cli(["extract", "--input", *inputs, "--output", str(out), "--workers", str(workers)]) == 2
    )
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert lines == [
        f"error: {out}: no space left on device while extracting ({lines[0].split('(')[1]}"
    ]
    assert lines[0].endswith(
        "bytes free now); no report.json was written, so shard will refuse this directory; free "
        "space and rerun the same command: the inputs parsed so far are kept"
    )
    assert "Traceback" not in err
    assert not re.search(r"^\[\d+/\d+\] .*No space", err, re.M)  # no input blamed for it
    assert not (out / "report.json").exists() and not list(out.rglob("*.tmp"))
    assert (len(list((out / ".parts").glob("*.index.npz"))) == len(inputs)) == parsed
    for f in out.rglob("*.gz"):
        gzip.decompress(f.read_bytes())  # every file left is whole
    with pytest.raises(UserError, match="incomplete or changed extract output"):
        resolve_inputs([str(out)], False)
    small_disk.resize(disk, "2m")
    run_extract(inputs, str(out), workers=workers, progress=False)
    run_extract(inputs, str(tmp_path / "clean"), progress=False)
    assert outputs(out) == outputs(tmp_path / "clean")
    assert (out / "report.json").read_bytes() == (tmp_path / "clean" / "report.json").read_bytes()
