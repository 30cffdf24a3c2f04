"""A hidden knowledge base for the generated corpus, and the best accuracy any model can reach.

    kb = KnowledgeBase.generate(seed=2023)
    corpus = synth.generate_corpus(out, 4000, knowledge=kb)   # PubMed XML, as without it
    kb.mention_bounds(article)    # per entity mention: the Bayes accuracy of predicting it

The world: made-up genes (ZOR4), diseases (Velmaritis) and chemicals (Tarvoxin), and tissues
(liver), each a single word with one spelling, used nowhere else in the corpus, with fixed
relations (functions from a head entity to a tail entity):

    causes      gene -> disease     (each disease has 2 genes)
    expressed   gene -> tissue      (16 genes over 6 tissues)
    binds       gene -> gene        (a pairing: the partner's partner is the gene)
    inhibits    chemical -> gene    (distinct targets)
    treats      chemical -> disease (the disease its target causes: a two-hop fact)

A knowledge article is about one topic (a gene or a chemical). Its title states one relation of
the topic, its abstract the others, once each, in varied sentences that name the topic, with now
and then a filler sentence of the ordinary generator between them. A stated tail is the
knowledge base's with probability 1 - noise, else a uniform draw of its type (the literature
disagrees now and then). So a masked tail can be predicted from its context only by a model that
has learned the relation.

The ceiling (`mention_bounds`): for every mention, the probability that the best possible guess is
right when every other word of the article is visible and the knowledge base is known: the exact
posterior under the generative model above. Real masking hides more (15% of the other tokens, and
truncation), so this is an upper bound on the Bayes rate at entity positions.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipeline.demo.synth import JOURNALS, LABELS, Article, Rich, filler_sentence, filler_words
from data_pipeline.errors import UserError
from data_pipeline.io_utils import atomic_write_bytes
from data_pipeline.records import iter_records, resolve_inputs, sample_identity, split_of

TYPES = ("gene", "disease", "chemical", "tissue")
# NOTE: sized so that the demo teacher (4 layers, hidden 64) learns the 64 facts in a few CPU
# minutes: with 32 genes and 16 diseases it had not started to in twice the steps.
_TISSUES = "liver lung spleen pancreas retina thymus".split()
_SIZES = {"gene": 16, "disease": 8, "chemical": 8}
_ONSETS = "b d f g k l m n p r s t v z".split()
_VOWELS = "a e i o u".split()
_DISEASE_END = ("itis", "osis", "emia", "oma", "pathy")
_CHEMICAL_END = ("mab", "nib", "oxin", "azole", "statin", "pril", "vir")


@dataclass(frozen=True)
class Relation:
    name: str
    head: str
    tail: str
    title: tuple[str, ...]  # templates: {h} the head (topic), {t} the tail
    sentences: tuple[str, ...]


RELATIONS = (
    Relation(
        "causes",
        "gene",
        "disease",
        ("Role of {h} in {t}", "{H} variants and the risk of {t}", "Loss of {h} in {t}"),
        (
            "Mutations in {h} cause {t}.",
            "{H} variants were associated with {t} in {n} patients.",
            "Loss of {h} function leads to {t}.",
            "Aberrant {h} signalling drives {t}.",
            "Patients with {t} carry rare alleles of {h}.",
            "{T} is caused by defects in {h}.",
        ),
    ),
    Relation(
        "expressed",
        "gene",
        "tissue",
        ("{H} expression in the {t}", "An atlas of {h} in the {t}"),
        (
            "{H} is highly expressed in the {t}.",
            "Expression of {h} was restricted to the {t}.",
            "In the {t}, {h} transcripts were abundant.",
            "Single-cell profiling located {h} in the {t}.",
        ),
    ),
    Relation(
        "binds",
        "gene",
        "gene",
        ("{H} interacts with {t}", "The {h} and {t} complex"),
        (
            "{H} binds {t} in vitro.",
            "{H} forms a stable complex with {t}.",
            "Knockdown of {t} abolished the activity of {h}.",
            "Co-immunoprecipitation showed that {h} interacts with {t}.",
        ),
    ),
    Relation(
        "inhibits",
        "chemical",
        "gene",
        ("{H} as an inhibitor of {t}", "Targeting {t} with {h}"),
        (
            "{H} selectively inhibits {t}.",
            "{H} is a potent antagonist of {t}.",
            "Binding of {h} to {t} was confirmed by crystallography.",
            "The activity of {t} fell sharply after {h} exposure.",
        ),
    ),
    Relation(
        "treats",
        "chemical",
        "disease",
        ("{H} for the treatment of {t}", "A randomized trial of {h} in {t}"),
        (
            "{H} is approved for the treatment of {t}.",
            "{H} reduced symptoms in {n} patients with {t}.",
            "In {t}, {h} improved outcomes over placebo.",
        ),
    ),
)
_BY_NAME = {r.name: r for r in RELATIONS}
TOPIC_SHARE = {"gene": 0.7, "chemical": 0.3}
FILLER = 0.05  # chance of a filler sentence (the ordinary generator's) before each fact sentence


@dataclass
class Mention:
    word: str
    role: int  # -1: the topic; k >= 0: the tail of fact k


@dataclass
class Facts:
    """What a knowledge article states: its topic, the facts (relation, stated tail) and every
    entity mention in text order (title first)."""

    topic_type: str
    topic: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    mentions: list[Mention] = field(default_factory=list)


@dataclass
class KnowledgeBase:
    entities: dict[str, list[str]]  # type -> names
    relations: dict[str, dict[str, str]]  # relation -> {head: tail}
    noise: float = 0.1
    seed: int = 0

    @classmethod
    def generate(cls, seed: int = 2023, noise: float = 0.1) -> KnowledgeBase:
        rng = random.Random(f"knowledge-{seed}")
        names: set[str] = set(filler_words())  # NOTE: no name may occur in the filler text

        def fresh(make) -> str:
            while (name := make()) in names:
                pass
            names.add(name)
            return name

        def syllables(k: int) -> str:
            return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(k))

        def gene() -> str:
            return (syllables(1) + rng.choice(_ONSETS)).upper() + str(rng.randint(1, 9))

        entities = {
            "gene": [fresh(gene) for _ in range(_SIZES["gene"])],
            "disease": [
                fresh(lambda: (syllables(rng.randint(2, 3)) + rng.choice(_DISEASE_END)).title())
                for _ in range(_SIZES["disease"])
            ],
            "chemical": [
                fresh(lambda: (syllables(rng.randint(2, 3)) + rng.choice(_CHEMICAL_END)).title())
                for _ in range(_SIZES["chemical"])
            ],
            "tissue": list(_TISSUES),
        }
        if clash := set(_TISSUES) & filler_words():
            raise ValueError(f"tissue names {sorted(clash)} also occur in the filler text")
        genes = entities["gene"]

        def spread(heads: list[str], tails: list[str]) -> dict[str, str]:
            cycle = [tails[i % len(tails)] for i in range(len(heads))]
            rng.shuffle(cycle)
            return dict(zip(heads, cycle, strict=True))

        order = rng.sample(genes, len(genes))
        binds = {}
        for a, b in zip(order[::2], order[1::2], strict=True):
            binds[a], binds[b] = b, a
        causes = spread(genes, entities["disease"])
        targets = rng.sample(genes, len(entities["chemical"]))
        inhibits = dict(zip(entities["chemical"], targets, strict=True))
        relations = {
            "causes": causes,
            "expressed": spread(genes, entities["tissue"]),
            "binds": binds,
            "inhibits": inhibits,
            "treats": {c: causes[g] for c, g in inhibits.items()},
        }
        return cls(entities, relations, noise, seed)

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "noise": self.noise,
            "entities": self.entities,
            "relations": self.relations,
        }

    @property
    def words(self) -> list[str]:
        return [w for t in TYPES for w in self.entities[t]]

    # ---------------------------------------------------------------- writing articles

    def article_facts(self, rng: random.Random) -> Facts:
        """Draw a topic and what is stated about it (each relation once, in random order)."""
        topic_type = "gene" if rng.random() < TOPIC_SHARE["gene"] else "chemical"
        topic = rng.choice(self.entities[topic_type])
        rels = [r.name for r in RELATIONS if r.head == topic_type]
        rng.shuffle(rels)
        facts = Facts(topic_type, topic)
        for name in rels:
            tail_type = _BY_NAME[name].tail
            tail = self.relations[name][topic]
            if rng.random() < self.noise:
                tail = rng.choice(self.entities[tail_type])
            facts.facts.append((name, tail))
        return facts

    def render(self, rng: random.Random, facts: Facts, fact: int, title: bool) -> list[tuple]:
        """Fact `fact` as a title or a sentence: a list of (text, role or None, italic)."""
        relation = _BY_NAME[facts.facts[fact][0]]
        template = rng.choice(relation.title if title else relation.sentences)
        text = template.replace("{n}", str(rng.randint(12, 4000)))
        parts: list[tuple] = []
        pos = 0
        while (start := text.find("{", pos)) >= 0:
            end = text.index("}", start)
            if text[pos:start]:
                parts.append((text[pos:start], None, False))
            # NOTE: a name keeps its one spelling (one token id), also at the start of a sentence
            if text[start + 1] in "hH":
                parts.append((facts.topic, -1, facts.topic_type == "gene"))
            else:
                parts.append((facts.facts[fact][1], fact, relation.tail == "gene"))
            pos = end + 1
        if text[pos:]:
            parts.append((text[pos:], None, False))
        return parts

    def make_article(self, rng: random.Random, pmid: int, version: int = 1) -> Article:
        """A citation about one topic, with the PubMed variety of synth.make_article: structured
        abstracts, inline markup (genes in <i>, markup in the filler), translated titles,
        citations without an abstract. `article.facts` records what it states."""
        facts = self.article_facts(rng)
        title = _rich(self.render(rng, facts, 0, title=True), facts)
        in_title = len(facts.mentions)
        if rng.random() < 0.05:
            title.add(" [corrected]")
        translated = rng.random() < 0.06
        if not translated:
            title.add(".")
        sentences: list[Rich] = []
        for k in range(1, len(facts.facts)):
            if rng.random() < FILLER:
                sentences.append(filler_sentence(rng))
            sentences.append(_rich(self.render(rng, facts, k, title=False), facts).add(" "))
        roll = rng.random()
        if roll < 0.08:
            sections: list[tuple[str | None, Rich]] = []
            del facts.facts[1:], facts.mentions[in_title:]  # only the title is written
        elif roll < 0.45 and len(sentences) >= 2:
            k = rng.randint(2, min(4, len(sentences)))
            labels = sorted(rng.sample(LABELS, k=k), key=LABELS.index)
            cuts = sorted(rng.sample(range(1, len(sentences)), k - 1))
            bounds = list(zip([0, *cuts], [*cuts, len(sentences)], strict=True))
            sections = [
                (label, _join(sentences[a:b])) for label, (a, b) in zip(labels, bounds, strict=True)
            ]
        else:
            sections = [(None, _join(sentences))]
        return Article(
            pmid=pmid,
            title=title,
            sections=sections,
            version=version,
            year=rng.choice([None, *range(1975, 2027)]),
            journal=rng.choice(JOURNALS),
            translated=translated,
            facts=facts,
        )

    # ---------------------------------------------------------------- the ceiling

    def _likelihood(self, facts: Facts, skip: int | None) -> np.ndarray:
        """P(stated tails except fact `skip` | topic = z) for every z of the topic's type."""
        heads = self.entities[facts.topic_type]
        like = np.ones(len(heads))
        for k, (name, stated) in enumerate(facts.facts):
            if k == skip:
                continue
            n_tail = len(self.entities[_BY_NAME[name].tail])
            table = self.relations[name]
            hit = np.array([table[z] == stated for z in heads], dtype=float)
            like *= (1 - self.noise) * hit + self.noise / n_tail
        return like

    def mention_bounds(self, facts: Facts) -> list[float]:
        """For each mention, in text order, max over values of P(value | every other word)."""
        heads = self.entities[facts.topic_type]
        named = sum(1 for m in facts.mentions if m.role == -1)
        bounds = []
        for m in facts.mentions:
            if m.role == -1:
                if named > 1:  # the topic is named elsewhere: it can be copied
                    bounds.append(1.0)
                    continue
                like = self._likelihood(facts, None)
                bounds.append(float(like.max() / like.sum()))
                continue
            name = facts.facts[m.role][0]
            relation, table = _BY_NAME[name], self.relations[name]
            if named > 0:
                posterior = np.array([z == facts.topic for z in heads], dtype=float)
            else:
                posterior = self._likelihood(facts, m.role)
                posterior /= posterior.sum()
            mass: dict[str, float] = {}
            for z, q in zip(heads, posterior, strict=True):
                mass[table[z]] = mass.get(table[z], 0.0) + q
            n_tail = len(self.entities[relation.tail])
            bounds.append(float((1 - self.noise) * max(mass.values()) + self.noise / n_tail))
        return bounds


def _rich(parts: list[tuple], facts: Facts) -> Rich:
    """Text from render()'s parts; records its mentions in `facts`, in text order."""
    out = Rich()
    for text, role, italic in parts:
        out.add(text, "i" if italic else None)
        if role is not None:
            facts.mentions.append(Mention(text, role))
    return out


def _join(sentences: list[Rich]) -> Rich:
    out = Rich()
    for s in sentences:
        out.xml += s.xml
        out.plain += s.plain
    return out


def masked_bound(bound: float, mask_share: float = 0.8, random_share: float = 0.1) -> float:
    """The ceiling at a selected position under BERT's 80/10/10 masking: a kept token (the rest)
    can be read off the input, a [MASK] or a random token (independent of the truth) leaves
    only the context, whose best guess is right with probability `bound`."""
    return (mask_share + random_share) * bound + (1 - mask_share - random_share)


# ---------------------------------------------------------------- the ceiling of a shard split


def write_mentions(path: str | Path, kb: KnowledgeBase, articles: dict[int, Article]) -> None:
    """Every knowledge article's mentions in text order with their bounds (`mention_bounds`), a
    JSON line per PMID: {"pmid": 1, "mentions": [[word, role, bound], ...]}; role -1 is the
    topic, k >= 0 the tail of the article's fact k."""
    lines = []
    for pmid, article in sorted(articles.items()):
        facts = article.facts
        if facts is None:
            continue
        bounds = kb.mention_bounds(facts)
        rows = [[m.word, m.role, b] for m, b in zip(facts.mentions, bounds, strict=True)]
        lines.append(json.dumps({"pmid": pmid, "mentions": rows}))
    atomic_write_bytes(Path(path), gzip.compress(("\n".join(lines) + "\n").encode(), mtime=0))


PROBE = "the"  # a word placed before another to see how the tokenizer spells it inside a text


def word_tokens(tokenizer, word: str) -> tuple[str, ...] | None:
    """The tokens `word` is as one token: at the start of a text and after a space. WordPiece
    spells both the same ("REB9"); byte-level BPE keeps the space in the token ("REB9" and
    "ĠREB9"). None when the tokenizer splits it in either place."""
    alone = tokenizer.tokenize(word)
    before = tokenizer.tokenize(PROBE)
    after = tokenizer.tokenize(f"{PROBE} {word}")
    if len(alone) != 1 or len(after) != len(before) + 1 or after[: len(before)] != before:
        return None
    return tuple(dict.fromkeys([alone[0], after[-1]]))


def entity_token_ids(tokenizer, words: list[str], where: str) -> dict[int, str]:
    """Token id -> word for entity words that the tokenizer keeps whole, each in every form it
    takes in a text (`word_tokens`); any other is an error (accuracy at entity positions is
    defined per token)."""
    forms = {w: word_tokens(tokenizer, w) for w in words}
    split = [w for w, f in forms.items() if f is None]
    if split:
        raise UserError(
            f"{where}: {len(split)} entity words are not single tokens of the tokenizer "
            f"(e.g. {split[:3]}); entity accuracy needs one token per entity"
        )
    return {tokenizer.convert_tokens_to_ids(t): w for w, f in forms.items() for t in f}


def split_ceiling(
    mentions: str | Path,
    records: str | Path,
    tokenizer,
    words: list[str],
    *,
    max_len: int,
    eval_fraction: float,
) -> dict:
    """The ceiling at the entity positions of the eval split exactly as `shard` cut it (same
    split hash, same truncation): the mean over those positions of `masked_bound`."""
    with gzip.open(mentions, "rt", encoding="utf-8") as f:
        by_pmid = {row["pmid"]: row["mentions"] for row in map(json.loads, f)}
    ids = entity_token_ids(tokenizer, words, str(mentions))
    bounds: dict[str, list[float]] = {"topic": [], "tail": []}
    n_records = 0
    for record in iter_records(resolve_inputs([str(records)])):
        if split_of(sample_identity(record)[0], eval_fraction) != "eval":
            continue
        n_records += 1
        tokens = tokenizer(record.text, truncation=True, max_length=max_len)["input_ids"]
        found = [ids[t] for t in tokens if t in ids]
        expected = by_pmid.get(record.pmid, [])[: len(found)]
        if [w for w, *_ in expected] != found:
            raise UserError(
                f"{mentions}: PMID {record.pmid}: the entity tokens of its text {found} are not "
                f"its recorded mentions {[w for w, *_ in expected]}"
            )
        for _, role, bound in expected:
            bounds["topic" if role == -1 else "tail"].append(bound)
    every = bounds["topic"] + bounds["tail"]
    if not every:
        raise UserError(f"{records}: no entity mention in the eval split")
    return {
        "entity_acc": float(np.mean([masked_bound(b) for b in every])),
        "context_bound": float(np.mean(every)),
        "by_role": {k: float(np.mean(v)) if v else None for k, v in bounds.items()},
        "entity_positions": len(every),
        "eval_records": n_records,
        "max_len": max_len,
    }
