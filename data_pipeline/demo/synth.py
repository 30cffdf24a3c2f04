"""Generated PubMed-format XML and a WordPiece tokenizer trained on it (no hub, no network).

This is where the embedded demo corpus and the test fixtures come from. The XML follows the NLM
PubMed DTD in the parts the pipeline reads, with the variety of the real baseline: structured
abstracts (labelled AbstractText sections), inline markup (<i>, <b>, <sup>, <sub>, MathML),
translated titles in square brackets, citations without an abstract, book articles, and update
files that revise citations (a higher PMID Version or a re-issued record) or delete them
(DeleteCitation). Every generated article carries the plain text that extraction must produce.
"""

from __future__ import annotations

import gzip
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from data_pipeline.demo.knowledge import Facts, KnowledgeBase

DOCTYPE = (
    '<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" '
    '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">'
)
MATHML_NS = "http://www.w3.org/1998/Math/MathML"

_GENES = "BRCA1 TP53 EGFR KRAS IL-6 TNF-alpha VEGF HER2 PD-L1 CD4 CD8 MYC APOE CFTR ACE2".split()
_DISEASES = (
    "breast cancer|type 2 diabetes|hypertension|asthma|Alzheimer's disease|sepsis|tuberculosis|"
    "chronic kidney disease|rheumatoid arthritis|COVID-19|malaria|heart failure|melanoma|"
    "Parkinson's disease|hepatitis C|obesity|stroke|epilepsy|colorectal cancer|psoriasis"
).split("|")
_CHEMICALS = (
    "metformin|cisplatin|aspirin|insulin|dexamethasone|vancomycin|tamoxifen|ibuprofen|"
    "warfarin|paclitaxel|atorvastatin|lithium|nitric oxide|glucose|cholesterol"
).split("|")
_NOUNS = (
    "patients|cells|mice|expression|levels|treatment|therapy|outcomes|risk|mortality|samples|"
    "cohort|survival|inflammation|proliferation|apoptosis|response|biomarkers|mutations|dose|"
    "receptor|pathway|protein|tumour|infection|children|women|adults|participants|activity"
).split("|")
_ADJS = (
    "significant|elevated|reduced|novel|clinical|randomized|prospective|chronic|acute|"
    "molecular|systemic|oral|genetic|independent|primary|secondary|severe|mild|early|late"
).split("|")
_VERBS = (
    "increased|decreased|improved|inhibited|promoted|predicted|reduced|enhanced|regulated|"
    "was associated with|correlated with|did not affect|modulated|induced|suppressed"
).split("|")
LABELS = ("BACKGROUND", "OBJECTIVE", "METHODS", "RESULTS", "CONCLUSIONS")
JOURNALS = (
    "Journal of Clinical Investigation|The Lancet|BMC Medicine|PLoS One|Nature Medicine|"
    "Bioinformatics|Journal of Biological Chemistry|Cancer Research|Diabetes Care|Circulation"
).split("|")


@dataclass
class Rich:
    """Text with inline markup: `xml` is what goes in the file, `plain` what extraction yields."""

    xml: str = ""
    plain: str = ""

    def add(self, text: str, tag: str | None = None) -> Rich:
        if tag is None:
            self.xml += escape(text)
        elif tag == "math":
            # NOTE: MathML contributes its text content with no separators, as itertext() does.
            self.xml += (
                f'<mml:math xmlns:mml="{MATHML_NS}"><mml:mi>{escape(text[0])}</mml:mi>'
                f"<mml:mo>=</mml:mo><mml:mn>{escape(text[1:])}</mml:mn></mml:math>"
            )
            text = f"{text[0]}={text[1:]}"
        else:
            self.xml += f"<{tag}>{escape(text)}</{tag}>"
        self.plain += text
        return self

    @property
    def normalized(self) -> str:
        return " ".join(self.plain.split())


@dataclass
class Article:
    pmid: int
    title: Rich
    sections: list[tuple[str | None, Rich]] = field(default_factory=list)
    version: int = 1
    year: int | None = 2020
    journal: str | None = "PLoS One"
    translated: bool = False  # title wrapped in [ ] as NLM does for translated titles
    metadata: bool = True  # authors, MeSH, references: ignored by extraction, but real-sized XML
    facts: Facts | None = None  # what a knowledge article states (data_pipeline/demo/knowledge.py)

    @property
    def expected_title(self) -> str:
        # Extraction drops the enclosing brackets of a translated title and keeps the final ".".
        return self.title.normalized + ("." if self.translated else "")

    @property
    def expected_abstract(self) -> str:
        return " ".join(s.normalized for _, s in self.sections if s.normalized).strip()

    def to_xml(self) -> str:
        title = f"[{self.title.xml}]." if self.translated else self.title.xml
        abstract = ""
        if self.sections:
            parts = []
            for label, text in self.sections:
                attrs = f' Label="{label}" NlmCategory="{label}"' if label else ""
                parts.append(f"<AbstractText{attrs}>{text.xml}</AbstractText>")
            abstract = f"<Abstract>{''.join(parts)}</Abstract>"
        date = f"<PubDate><Year>{self.year}</Year></PubDate>" if self.year else "<PubDate/>"
        journal = f"<Title>{escape(self.journal)}</Title>" if self.journal else ""
        authors, mesh, references = _metadata(self.pmid) if self.metadata else ("", "", "")
        return (
            '<PubmedArticle><MedlineCitation Status="MEDLINE" Owner="NLM">'
            f'<PMID Version="{self.version}">{self.pmid}</PMID>'
            '<Article PubModel="Print"><Journal><JournalIssue CitedMedium="Internet">'
            f"{date}</JournalIssue>{journal}</Journal>"
            f"<ArticleTitle>{title}</ArticleTitle>{abstract}"
            f"{authors}<Language>eng</Language></Article>{mesh}</MedlineCitation>"
            "<PubmedData><PublicationStatus>ppublish</PublicationStatus>"
            f'<ArticleIdList><ArticleId IdType="pubmed">{self.pmid}</ArticleId></ArticleIdList>'
            f"{references}</PubmedData></PubmedArticle>"
        )


_SURNAMES = "Smith Wang Garcia Müller Rossi Kim Nguyen Silva Cohen Novak Tanaka Okafor".split()
_MESH = "Humans|Female|Male|Adult|Middle Aged|Aged|Mice|Risk Factors|Prognosis|Cohort Studies"


def filler_words() -> set[str]:
    """Every word the ordinary generator writes (knowledge entities must avoid them)."""
    words = " ".join([*_GENES, *_DISEASES, *_CHEMICALS, *_NOUNS, *_ADJS, *_VERBS, *LABELS])
    return set(words.split())


def _metadata(pmid: int) -> tuple[str, str, str]:
    """Author list, MeSH headings and references, sized like real baseline records (~6 KB).

    Seeded by the PMID alone so that adding them never changes the text of the corpus.
    """
    rng = random.Random(pmid)
    authors = "".join(
        f'<Author ValidYN="Y"><LastName>{rng.choice(_SURNAMES)}</LastName>'
        f"<ForeName>{chr(65 + rng.randrange(26))}.</ForeName><Initials>{chr(65 + i)}</Initials>"
        "<AffiliationInfo><Affiliation>Department of Medicine, University Hospital, "
        f"{rng.randint(1000, 99999)} City, Country.</Affiliation></AffiliationInfo></Author>"
        for i in range(rng.randint(2, 9))
    )
    mesh = "".join(
        f'<MeshHeading><DescriptorName UI="D{rng.randint(1, 99999):06d}" MajorTopicYN="N">'
        f"{term}</DescriptorName></MeshHeading>"
        for term in rng.sample(_MESH.split("|"), k=rng.randint(3, 9))
    )
    references = "".join(
        f"<Reference><Citation>{rng.choice(_SURNAMES)} X, et al. {rng.choice(JOURNALS)}. "
        f"{rng.randint(1980, 2025)};{rng.randint(1, 99)}:{rng.randint(1, 999)}.</Citation>"
        f'<ArticleIdList><ArticleId IdType="pubmed">{rng.randint(1, 39_999_999)}</ArticleId>'
        "</ArticleIdList></Reference>"
        for _ in range(rng.randint(0, 30))
    )
    return (
        f'<AuthorList CompleteYN="Y">{authors}</AuthorList>',
        f"<MeshHeadingList>{mesh}</MeshHeadingList>",
        f"<ReferenceList>{references}</ReferenceList>" if references else "",
    )


def _rare_term(rng: random.Random) -> str:
    """A term from PubMed's long tail: gene symbols, variant, trial and registry ids, compounds."""
    letters, digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"
    kind = rng.randrange(5)
    if kind == 0:
        sym = "".join(rng.choices(letters, k=rng.randint(3, 5)))
        return sym + "".join(rng.choices(digits, k=rng.randint(1, 4))) + rng.choice(["", "A", "B"])
    if kind == 1:
        return f"rs{rng.randint(10_000, 999_999_999)}"
    if kind == 2:
        return f"NCT{rng.randint(0, 99_999_999):08d}"
    if kind == 3:
        stems = ["chloro", "methyl", "phenyl", "amino", "hydroxy", "ethyl", "fluoro", "pyridin"]
        return (
            f"{rng.randint(1, 9)}-({rng.choice(stems)}{rng.choice(stems)})-"
            + "".join(rng.choices(stems, k=rng.randint(1, 3)))
            + rng.choice(["amide", "ol", "one", "ine", "ate"])
        )
    return f"{rng.randint(0, 999)}.{rng.randint(0, 99)}"


_GREEK = "\u03b1\u03b2\u03b3\u03ba"  # alpha beta gamma kappa


def _measure(rng: random.Random) -> str:
    """A measurement or symbol as PubMed abstracts write them, mostly outside ASCII."""
    a, b = rng.randint(1, 99), rng.randint(0, 9)
    return rng.choice(
        [
            f"{a}.{b} \u00b1 {rng.randint(0, 9)}.{b} \u03bcg/mL",
            f"\u2265 {a} years",
            f"{a}\u2013{a + rng.randint(1, 60)} h",
            rng.choice(_GREEK) + "-" + rng.choice(_NOUNS),
            f"{a} \u00b0C",
            f"{a} \u00d7 10{rng.randint(2, 9)} cells",
        ]
    )


def filler_sentence(rng: random.Random, long_tail: bool = False) -> Rich:
    r = Rich()
    pick = rng.random()
    subject = rng.choice(_CHEMICALS) if pick < 0.4 else f"{rng.choice(_ADJS)} {rng.choice(_NOUNS)}"
    r.add(subject[0].upper() + subject[1:] + " ")
    r.add(rng.choice(_VERBS) + " ")
    if rng.random() < 0.35:
        r.add(rng.choice(_GENES), "i")
        r.add(" ")
    r.add(f"{rng.choice(_NOUNS)} in {rng.randint(12, 4000)} {rng.choice(_NOUNS)} with ")
    r.add(rng.choice(_DISEASES))
    roll = rng.random()
    if roll < 0.15:
        r.add(" (p < 0.0")
        r.add(str(rng.randint(1, 5)))
        r.add(")")
    elif roll < 0.22:
        r.add(" at 10")
        r.add(f"-{rng.randint(3, 9)}", "sup")
        r.add(" M")
    elif roll < 0.27:
        r.add(" measured as CO")
        r.add("2", "sub")
    elif roll < 0.30:
        r.add(" where ")
        r.add(f"{rng.choice('xyzk')}{rng.randint(2, 99)}", "math")
    elif roll < 0.34:
        r.add(" ")
        r.add("in vivo", "b")
    if long_tail:  # NOTE: no rng draw without it, so the default corpora stay as they were
        if rng.random() < 0.6:
            r.add(f" and {_rare_term(rng)}")
        if rng.random() < 0.4:
            r.add(f" ({_measure(rng)})")
    r.add(". ")
    return r


def _paragraph(rng: random.Random, n: int, long_tail: bool = False) -> Rich:
    out = Rich()
    for _ in range(n):
        s = filler_sentence(rng, long_tail)
        out.xml += s.xml
        out.plain += s.plain
    return out


def make_article(
    rng: random.Random, pmid: int, version: int = 1, long_tail: bool = False
) -> Article:
    """One citation with the variety of the real baseline (fractions roughly as in PubMed).

    `long_tail` adds what the small generated vocabulary lacks: rare terms (gene symbols, variant
    and trial ids, compound names, numbers), so that most words are not seen a thousand times, and
    measurements with non-ASCII symbols (plus-minus, micro, >=, en dash, Greek letters)."""
    title = Rich()
    title.add(f"{rng.choice(_ADJS).capitalize()} {rng.choice(_NOUNS)} of ")
    if rng.random() < 0.3:
        title.add(rng.choice(_GENES), "i")
        title.add(" in ")
    title.add(rng.choice(_DISEASES))
    if rng.random() < 0.05:
        title.add(" [corrected]")
    translated = rng.random() < 0.06
    if not translated:
        title.add(".")
    roll = rng.random()
    if roll < 0.08:
        sections: list[tuple[str | None, Rich]] = []
    elif roll < 0.45:
        labels = rng.sample(LABELS, k=rng.randint(3, 5))
        labels.sort(key=LABELS.index)
        sections = [(label, _paragraph(rng, rng.randint(2, 6), long_tail)) for label in labels]
    else:
        # 8-26 sentences of ~75 characters: PubMed abstracts average about 1,300 characters.
        sections = [(None, _paragraph(rng, rng.randint(8, 26), long_tail))]
    return Article(
        pmid=pmid,
        title=title,
        sections=sections,
        version=version,
        year=rng.choice([None, *range(1975, 2027)]),
        journal=rng.choice(JOURNALS),
        translated=translated,
    )


def render_pubmed_xml(
    articles: Iterable[Article], deletions: Iterable[int] = (), book_articles: int = 0
) -> str:
    body = [a.to_xml() for a in articles]
    body += [
        f'<PubmedBookArticle><BookDocument><PMID Version="1">{90_000_000 + i}</PMID>'
        "<ArticleTitle>Book chapter</ArticleTitle></BookDocument></PubmedBookArticle>"
        for i in range(book_articles)
    ]
    deletions = list(deletions)
    if deletions:
        pmids = "".join(f'<PMID Version="1">{p}</PMID>' for p in deletions)
        body.append(f"<DeleteCitation>{pmids}</DeleteCitation>")
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f"{DOCTYPE}\n<PubmedArticleSet>\n" + "\n".join(body) + "\n</PubmedArticleSet>\n"
    )


def write_xml(path: str | Path, xml: str) -> Path:
    """Write XML as .xml or, when the name ends in .gz, gzip (mtime 0 for stable bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = xml.encode("utf-8")
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            gz.write(data)
    else:
        path.write_bytes(data)
    return path


@dataclass
class Corpus:
    files: list[Path]
    expected: dict[int, Article]  # the citations that survive updates and deletions, by PMID
    deleted: set[int]
    revised: set[int]


def generate_corpus(
    out_dir: str | Path,
    n_articles: int,
    n_files: int = 4,
    seed: int = 0,
    update: bool = True,
    prefix: str = "pubmed26n",
    long_tail: bool = False,
    knowledge: KnowledgeBase | None = None,
) -> Corpus:
    """Baseline files `<prefix>0001.xml.gz`... and, with `update`, one update file after them.

    The update file re-issues about 3% of the citations with new text (a third with a higher
    PMID Version) and deletes about 1%, as NLM's daily update files do. `long_tail`: see
    make_article (benchmarks use it; tests keep the default). `knowledge`: every citation is a
    knowledge article of that knowledge base (data_pipeline/demo/knowledge.py; the demo uses it).
    """
    rng = random.Random(seed)
    out = Path(out_dir)

    def make(pmid: int, version: int = 1) -> Article:
        if knowledge is not None:
            return knowledge.make_article(rng, pmid, version)
        return make_article(rng, pmid, version, long_tail=long_tail)

    pmids = [10_000_000 + i * 7 for i in range(n_articles)]
    articles = {p: make(p) for p in pmids}
    files = []
    per_file = -(-n_articles // n_files)
    for i in range(n_files):
        chunk = [articles[p] for p in pmids[i * per_file : (i + 1) * per_file]]
        books = 1 if i == 0 else 0
        files.append(
            write_xml(out / f"{prefix}{i + 1:04d}.xml.gz", render_pubmed_xml(chunk, (), books))
        )
    expected = dict(articles)
    deleted: set[int] = set()
    revised: set[int] = set()
    if update:
        chosen = rng.sample(pmids, k=max(2, n_articles // 25))
        n_revised = max(1, len(chosen) * 3 // 4)
        revised_list = chosen[:n_revised]
        deleted = set(chosen[n_revised:])
        new_versions = []
        for j, p in enumerate(revised_list):
            new = make(p, version=2 if j % 3 == 0 else 1)
            new_versions.append(new)
            expected[p] = new
        revised = set(revised_list)
        for p in deleted:
            expected.pop(p)
        name = f"{prefix}{n_files + 1:04d}.xml.gz"
        files.append(write_xml(out / name, render_pubmed_xml(new_versions, sorted(deleted))))
    return Corpus(files=files, expected=expected, deleted=deleted, revised=revised)


SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000, lowercase: bool = False
):
    """Train a BERT-style WordPiece tokenizer and save it as a Hugging Face tokenizer directory.

    Same normaliser, pre-tokeniser, special tokens and [CLS] x [SEP] template as BioBERT's cased
    vocabulary, so the pipeline treats it exactly as it would a hub tokenizer.
    """
    from tokenizers import models
    from tokenizers.trainers import WordPieceTrainer

    tok = _bert_tokenizer(models.WordPiece(unk_token="[UNK]"), lowercase)
    trainer = WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _save_bert_tokenizer(tok, out_dir, lowercase)


def frequent_words_wordpiece(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 8000, lowercase: bool = False
):
    """The same kind of tokenizer with a vocabulary made the same way on every machine: the
    special tokens, every character (alone and as a "##" continuation, so every word can be
    spelled), then whole words by falling count, ties by the word, up to `vocab_size`.

    NOTE: HF's WordPieceTrainer breaks ties between merges by hash order, which differs between
    processes (measured: four runs on the demo's texts, four different vocabularies, with one
    thread too), so a corpus tokenized with it differs from build to build."""
    from tokenizers import models

    tok = _bert_tokenizer(models.WordPiece(unk_token="[UNK]"), lowercase)
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = tok.normalizer.normalize_str(text)
        counts.update(word for word, _ in tok.pre_tokenizer.pre_tokenize_str(normalized))
    chars = sorted({c for word in counts for c in word})
    vocab = dict.fromkeys([*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)])
    if len(vocab) > vocab_size:
        raise ValueError(f"vocab_size={vocab_size}: the texts have {len(chars)} characters")
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(word)
    return wordpiece_from_vocab({t: i for i, t in enumerate(vocab)}, out_dir, lowercase)


def wordpiece_from_vocab(vocab: dict[str, int], out_dir: str | Path, lowercase: bool = False):
    """The same kind of tokenizer with a given vocabulary (token -> id; SPECIAL_TOKENS included),
    nothing learned: e.g. a vocabulary of a real model's size for benchmarks."""
    from tokenizers import models

    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"vocabulary lacks the special tokens {missing}")
    tok = _bert_tokenizer(models.WordPiece(vocab, unk_token="[UNK]"), lowercase)
    return _save_bert_tokenizer(tok, out_dir, lowercase)


def _bert_tokenizer(model, lowercase: bool):
    from tokenizers import Tokenizer, normalizers, pre_tokenizers

    tok = Tokenizer(model)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tok


def _save_bert_tokenizer(tok, out_dir: str | Path, lowercase: bool):
    from tokenizers import decoders, processors
    from transformers import PreTrainedTokenizerFast

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        do_lower_case=lowercase,
    )
    fast.save_pretrained(str(out_dir))
    return fast
