"""data_pipeline/demo/knowledge.py: the knowledge base, its articles and the ceiling at entity
positions.

    .venv/bin/python -m pytest tests/test_knowledge.py -q

The bounds are checked two independent ways: against a brute-force posterior that enumerates the
topic and the masked value over the whole generative model, and by simulation: predicting every
mention the Bayes-optimal way over many generated articles is right as often as the bounds say.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from data_pipeline.demo.knowledge import (
    RELATIONS,
    Facts,
    KnowledgeBase,
    Mention,
    masked_bound,
)
from data_pipeline.demo.synth import filler_words

KB = KnowledgeBase.generate(seed=5)
BY_NAME = {r.name: r for r in RELATIONS}


def test_the_knowledge_base_is_a_set_of_functions_over_single_unused_words():
    words = KB.words
    assert len(words) == len(set(words))  # one spelling, one entity
    assert not set(words) & filler_words()  # never written by the ordinary generator
    assert all(w.isalnum() for w in words)  # one piece for BERT's pre-tokenizer
    for r in RELATIONS:
        table = KB.relations[r.name]
        assert sorted(table) == sorted(KB.entities[r.head])
        assert set(table.values()) <= set(KB.entities[r.tail])
    binds = KB.relations["binds"]
    assert all(binds[binds[g]] == g and binds[g] != g for g in binds)  # a pairing
    inhibits = KB.relations["inhibits"]
    assert len(set(inhibits.values())) == len(inhibits)  # distinct targets
    causes = KB.relations["causes"]
    assert KB.relations["treats"] == {c: causes[g] for c, g in inhibits.items()}
    assert KnowledgeBase.generate(seed=5).to_dict() == KB.to_dict()
    assert KnowledgeBase.generate(seed=6).to_dict() != KB.to_dict()


def test_articles_state_what_their_facts_record():
    rng = random.Random(0)
    for pmid in range(200):
        article = KB.make_article(rng, pmid)
        facts = article.facts
        text = f"{article.expected_title} {article.expected_abstract}"
        tokens = text.replace(".", " ").replace(",", " ").split()
        # every entity word of the text is a recorded mention, in order
        assert [t for t in tokens if t in set(KB.words)] == [m.word for m in facts.mentions]
        stated = [name for name, _ in facts.facts]
        assert len(set(stated)) == len(stated)  # each relation at most once
        assert {BY_NAME[n].head for n in stated} == {facts.topic_type}
        for m in facts.mentions:
            assert m.word == (facts.topic if m.role == -1 else facts.facts[m.role][1])
        # with an abstract, every relation of the topic; without, the title's only
        relations = [r for r in RELATIONS if r.head == facts.topic_type]
        assert len(stated) == (len(relations) if article.sections else 1)


def _brute_force(kb: KnowledgeBase, facts: Facts, i: int) -> float:
    """max_v P(mention i = v | every other mention), by enumerating topic z and value v."""
    heads = kb.entities[facts.topic_type]
    mention = facts.mentions[i]
    others = [m for j, m in enumerate(facts.mentions) if j != i]

    def tail_prob(name: str, tail: str, z: str) -> float:
        n = len(kb.entities[BY_NAME[name].tail])
        return (1 - kb.noise) * (kb.relations[name][z] == tail) + kb.noise / n

    if mention.role == -1:
        candidates = heads
    else:
        candidates = kb.entities[BY_NAME[facts.facts[mention.role][0]].tail]
    weights = []
    for v in candidates:
        total = 0.0
        for z in heads:
            p = 1.0 / len(heads)
            if mention.role == -1 and v != z:
                continue
            if any(m.role == -1 and m.word != z for m in others):
                continue
            for k, (name, tail) in enumerate(facts.facts):
                p *= tail_prob(name, v if k == mention.role else tail, z)
            total += p
        weights.append(total)
    return max(weights) / sum(weights)


def _crafted() -> list[Facts]:
    """Cases the generator rarely writes: the topic named once or not at all, a noisy tail."""
    g = KB.entities["gene"][0]
    causes, tissue = KB.relations["causes"][g], KB.relations["expressed"][g]
    wrong = next(d for d in KB.entities["disease"] if d != causes)
    c = KB.entities["chemical"][0]
    return [
        Facts("gene", g, [("causes", causes)], [Mention(g, -1), Mention(causes, 0)]),
        Facts("gene", g, [("causes", causes), ("expressed", tissue)], [Mention(causes, 0)]),
        Facts("gene", g, [("causes", wrong)], [Mention(wrong, 0)]),
        Facts(
            "chemical",
            c,
            [("inhibits", KB.relations["inhibits"][c]), ("treats", KB.relations["treats"][c])],
            [Mention(c, -1), Mention(KB.relations["treats"][c], 1)],
        ),
    ]


def test_bounds_equal_the_brute_force_posterior():
    rng = random.Random(1)
    cases = [KB.make_article(rng, p).facts for p in range(60)] + _crafted()
    for facts in cases:
        bounds = KB.mention_bounds(facts)
        assert len(bounds) == len(facts.mentions)
        for i, bound in enumerate(bounds):
            assert bound == pytest.approx(_brute_force(KB, facts, i), rel=1e-9), (facts, i)
    # a tail whose topic is hidden, from another fact of the same topic: less than certain
    assert 0 < KB.mention_bounds(_crafted()[1])[0] < 1 - KB.noise


def test_the_bayes_predictor_is_right_as_often_as_the_bounds_say():
    """Simulation: predict each mention the Bayes-optimal way from the rest of its article; the
    hit rate over many articles matches the mean bound (its expected value)."""
    rng = random.Random(2)
    hits, bounds = [], []
    for pmid in range(3000):
        facts = KB.make_article(rng, pmid).facts
        named = [m for m in facts.mentions if m.role == -1]
        for m, bound in zip(facts.mentions, KB.mention_bounds(facts), strict=True):
            if m.role == -1:
                if len(named) < 2:
                    continue  # (its guess comes from the tails; covered by the brute force)
                guess = facts.topic  # copied from another mention
            else:
                guess = KB.relations[facts.facts[m.role][0]][facts.topic]
            hits.append(guess == m.word)
            bounds.append(bound)
    n = len(hits)
    assert n > 5000
    spread = 4 * math.sqrt(np.mean(bounds) * (1 - np.mean(bounds)) / n)
    assert abs(np.mean(hits) - np.mean(bounds)) < spread
    assert np.mean(bounds) < 1.0  # the noise is real: no model is always right


def test_masked_bound_counts_kept_tokens_as_readable():
    assert masked_bound(0.5) == pytest.approx(0.9 * 0.5 + 0.1)
    assert masked_bound(1.0) == pytest.approx(1.0)
    assert masked_bound(0.0, mask_share=0.8, random_share=0.1) == pytest.approx(0.1)


# ---------------------------------------------------------------- the demo's entity words


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from data_pipeline.demo.build import build_demo

    out = tmp_path_factory.mktemp("kdemo") / "demo"
    build_demo(out, articles=300, files=3, workers=1, log=lambda *_: None)
    return out


def test_the_demo_ceiling_is_computed_on_the_eval_split(demo):
    import json

    from data_pipeline.shards.manifest import Manifest

    kb = json.loads((demo / "knowledge.json").read_text())
    assert kb["entities"] == KnowledgeBase.generate(2023).entities  # the demo's seed
    ceiling, manifest = kb["ceiling"], Manifest.load(demo / "shards")
    assert ceiling["eval_records"] == manifest.splits["eval"].samples
    assert ceiling["max_len"] == manifest.max_len
    assert 0.5 < ceiling["context_bound"] < ceiling["entity_acc"] < 1.0
    assert ceiling["entity_acc"] == pytest.approx(masked_bound(ceiling["context_bound"]))
    assert ceiling["by_role"]["tail"] < ceiling["by_role"]["topic"] <= 1.0


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read it as JSON"),
        ('{"words": ["A"]}', 'expected an object with "entities"'),
        ('{"entities": []}', 'expected an object with "entities"'),
        ('{"entities": {"gene": [1, 2]}}', 'expected an object with "entities"'),
        ('{"entities": ["co-immunoprecipitation"]}', "are not single tokens"),
    ],
)
def test_bad_entity_files_are_refused_naming_the_file(demo, tmp_path, content, message):
    from data_pipeline.errors import UserError
    from data_pipeline.shards.manifest import load_tokenizer
    from trainer.train.inputs import load_entities

    path = tmp_path / "entities.json"
    path.write_text(content)
    tok = load_tokenizer(str(demo / "tokenizer"))
    with pytest.raises((ValueError, UserError), match=message) as e:
        load_entities(str(path), tok, 4096)
    assert str(path) in str(e.value)


def test_entity_files_give_a_table_and_the_ceiling(demo):
    from data_pipeline.shards.manifest import load_tokenizer
    from trainer.train.inputs import load_entities

    tok = load_tokenizer(str(demo / "tokenizer"))
    table, ceiling = load_entities(str(demo / "knowledge.json"), tok, 4096)
    ids = {tok.convert_tokens_to_ids(w) for w in KnowledgeBase.generate(2023).words}
    assert set(table.nonzero().flatten().tolist()) == ids and len(ids) == len(KB.words)
    assert 0.5 < ceiling < 1.0
