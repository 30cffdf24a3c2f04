"""The embedded demo corpus: generated PubMed XML -> extract -> tokenizer -> shards.

    python -m data_pipeline demo [--tokenizer wordpiece|bpe] [--output DIR] [--articles 8000]

The tokenizer is trained on the corpus: a cased WordPiece (the BERT demo's, in data/demo by
default) or a byte-level BPE (RoBERTa / ModernBERT style, data_pipeline/demo/bpe.py; the ModernBERT
demo's, in data/demo-bpe by default). A directory holds one kind: the demo's record names it, and
a directory built for one kind is refused for the other, so the two demos never share a file.

Everything is made offline by the pipeline's own commands, so the demo exercises exactly the code a
real PubMed run does. The citations are knowledge articles (data_pipeline/demo/knowledge.py):
made-up genes, diseases, chemicals and tissues with fixed relations, so that a model can learn
something. Each step is skipped when its output is already complete, so `make demo` builds the
corpus once; a changed generator (its code) or changed settings rebuild it, and say so. Layout under
--output:

    xml/            pubmed26n0001.xml.gz ... (baseline) + one update file (revisions, deletions),
                    mentions.jsonl.gz (every article's entity mentions and their bounds)
    records/        extract output (*.jsonl.gz, report.json)
    tokenizer/      the tokenizer (Hugging Face directory), the same on every machine: a cased
                    BERT-style WordPiece of characters and the most frequent words, or a byte-level
                    BPE in which every entity word is one token
    shards/         train-*.tar, eval-*.tar, manifest.json
    datasets/       NER/{NCBI-disease,BC5CDR-chem,BC2GM}/{train,devel,test}.tsv: the downstream
                    task in miniature, in BioBERT's layout (data_pipeline/demo/ner.py)
    knowledge.json  the knowledge base (entities by type, relations, noise), the tokenizer kind
                    and the ceiling: the best accuracy any model can reach at the eval split's
                    entity positions; written last, so its presence says every step above is
                    complete
    .demo.json      the demo's record, written first, naming the tokenizer kind: a directory
                    without it (or, built before it existed, without xml/.complete.json) that
                    holds anything is the user's and is refused; `make clean` removes data/demo
                    and data/demo-bpe only where it is there

A rebuild removes only the demo's own files, each by the name its step gives it; a user's file
anywhere under --output stays.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from data_pipeline.demo import bpe, knowledge, synth
from data_pipeline.demo import ner as demo_ner
from data_pipeline.demo.bpe import train_byte_level_bpe
from data_pipeline.demo.knowledge import KnowledgeBase, split_ceiling, write_mentions
from data_pipeline.demo.synth import frequent_words_wordpiece, generate_corpus
from data_pipeline.errors import UserError
from data_pipeline.extract import run_extract
from data_pipeline.io_utils import atomic_write_json, claim_output_dir, share_tree
from data_pipeline.records import iter_records, resolve_inputs
from data_pipeline.shards.journal import clear_run
from data_pipeline.shards.manifest import MANIFEST_NAME, Manifest, load_tokenizer
from data_pipeline.shards.writer import run_shard

TOKENIZERS = ("wordpiece", "bpe")
DEFAULT_OUTPUTS = {"wordpiece": "data/demo", "bpe": "data/demo-bpe"}
DEFAULT_OUTPUT = DEFAULT_OUTPUTS["wordpiece"]
NER_DIR = "datasets"  # `python -m evaluation run --data data/demo/datasets`
DEMO_MAX_LEN = 128  # the demo's tiny models train in minutes on 2 CPU cores at this length
DEMO_VOCAB = 4096
DEMO_EVAL_FRACTION = 0.15  # a large eval split: gains of a point must be resolvable
# NOTE: small shards, so that 2 ranks x 2 loader workers get even work and few samples are dropped.
DEMO_SAMPLES_PER_SHARD = 128
KNOWLEDGE_NAME = "knowledge.json"  # the knowledge base, its entity words and the ceiling
MENTIONS_NAME = "mentions.jsonl.gz"  # in xml/: every article's entity mentions and bounds
MARK = ".demo.json"  # the demo's record (the layout above)
XML_DONE = "xml/.complete.json"  # the generator's settings; the mark of a demo older than MARK
XML_PREFIX = "pubmed26n"
# The names the demo gives its generated inputs and what extract makes of them (xml/, records/).
_XML_FILE = re.compile(rf"{XML_PREFIX}\d{{4}}\.xml\.gz|{re.escape(MENTIONS_NAME)}")
_RECORDS_FILE = re.compile(rf"{XML_PREFIX}\d{{4}}\.jsonl\.gz|report\.json")
_PARTS_FILE = re.compile(rf"{XML_PREFIX}\d{{4}}\.(part\.gz|index\.npz)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default="wordpiece",
        help="the tokenizer trained on the corpus (default: %(default)s)",
    )
    p.add_argument(
        "--output",
        help=f"demo directory (default: {DEFAULT_OUTPUTS['wordpiece']}, "
        f"{DEFAULT_OUTPUTS['bpe']} for bpe)",
    )
    p.add_argument("--articles", type=int, default=8000, help="citations in the baseline")
    p.add_argument("--files", type=int, default=8, help="baseline files (plus one update file)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=2023)


def demo_root(shards: str | list[str], key: str = "shards") -> Path:
    """DIR, where a demo whose shards are DIR/shards is built; `shards` (named by `key` in the
    message) must be such a directory."""
    if isinstance(shards, str) and Path(shards).name == "shards":
        return Path(shards).parent
    raise UserError(
        f"{key}={shards!r}: not a demo's shard directory; expected DIR/shards (the demo corpus "
        "is built in DIR)"
    )


def generator_digest() -> str:
    """A hash of the generator's code: a changed generator rebuilds the demo corpus."""
    h = hashlib.sha256()
    for module in (synth, knowledge, demo_ner, bpe):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def build_demo(
    output: str | Path = DEFAULT_OUTPUT,
    articles: int = 8000,
    files: int = 8,
    workers: int = 2,
    seed: int = 2023,
    log=print,
    tokenizer: str | bool = "wordpiece",
) -> Path:
    """Build (or complete) the demo corpus with a `tokenizer` ("wordpiece" or "bpe"; True, as
    `data.build_demo: true` says, is wordpiece) tokenizer; returns the shard directory. A
    directory built with the other kind is refused."""
    if tokenizer is True:
        tokenizer = "wordpiece"
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer={tokenizer!r}: expected one of {TOKENIZERS}")
    root = claim_output_dir(output, (MARK, XML_DONE), "use a new or empty directory as --output")
    built = built_kind(root)
    if built is not None and built != tokenizer:
        raise UserError(
            f"{root}: a demo built with the {built} tokenizer; a {tokenizer} demo is built in a "
            f"directory of its own (e.g. {DEFAULT_OUTPUTS[tokenizer]})"
        )
    if not (root / MARK).exists():
        mark = {"written_by": "python -m data_pipeline demo", "tokenizer": tokenizer}
        atomic_write_json(root / MARK, mark)
    xml_dir, records, tok_dir, shards = (
        root / d for d in ("xml", "records", "tokenizer", "shards")
    )
    kb_file = root / KNOWLEDGE_NAME

    xml_done = root / XML_DONE
    settings = {
        "articles": articles,
        "files": files,
        "seed": seed,
        "generator": generator_digest(),
        "tokenizer": tokenizer,
        "max_len": DEMO_MAX_LEN,
        "vocab": DEMO_VOCAB,
        "eval_fraction": DEMO_EVAL_FRACTION,
        "samples_per_shard": DEMO_SAMPLES_PER_SHARD,
    }
    old = json.loads(xml_done.read_text()) if xml_done.exists() else None
    if old is not None:
        old.setdefault("tokenizer", "wordpiece")  # the one kind before the key
    if old == settings and kb_file.exists():  # NOTE: written last, so every step is complete
        return shards
    kb = KnowledgeBase.generate(seed)
    if old != settings:
        if old is not None:
            changed = sorted(k for k in settings if old.get(k) != settings[k])
            log(f"demo: {', '.join(changed)} changed since {root} was built: rebuilding it")
        _remove_previous_build(root)
        log(f"demo: generating {articles} PubMed citations in {files} files + 1 update file")
        corpus = generate_corpus(
            xml_dir, n_articles=articles, n_files=files, seed=seed, prefix=XML_PREFIX, knowledge=kb
        )
        write_mentions(xml_dir / MENTIONS_NAME, kb, corpus.expected)
        atomic_write_json(xml_done, settings)

    if not (records / "report.json").exists():
        log("demo: extract")
    run_extract([str(xml_dir)], str(records), workers=workers, progress=False)

    if not (tok_dir / "tokenizer.json").exists():
        if tokenizer == "bpe":
            log(f"demo: a byte-level BPE tokenizer of at most {DEMO_VOCAB} tokens")
        else:
            log(f"demo: a cased WordPiece tokenizer of the {DEMO_VOCAB} most frequent words")
        # NOTE: trained into a temporary directory and moved into place file by file, with
        # tokenizer.json (this step's mark) last: a crash mid-save never leaves a tokenizer that
        # looks complete, and a user's file in tokenizer/ stays.
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer.", dir=root))
        texts = (r.text for r in iter_records(resolve_inputs([str(records)])))
        if tokenizer == "bpe":
            train_byte_level_bpe(texts, tmp, vocab_size=DEMO_VOCAB, whole=kb.words)
        else:
            frequent_words_wordpiece(texts, tmp, vocab_size=DEMO_VOCAB)
        share_tree(tmp)
        tok_dir.mkdir(exist_ok=True)
        for made in sorted(tmp.iterdir(), key=lambda f: f.name == "tokenizer.json"):
            os.replace(made, tok_dir / made.name)
        tmp.rmdir()

    if not (shards / MANIFEST_NAME).exists():
        log("demo: shard")
    run_shard(
        [str(records)],
        str(tok_dir),
        str(shards),
        max_len=DEMO_MAX_LEN,
        eval_fraction=DEMO_EVAL_FRACTION,
        workers=workers,
        samples_per_shard=DEMO_SAMPLES_PER_SHARD,
        progress=False,
    )
    manifest = Manifest.load(shards)
    if not kb_file.exists():
        log("demo: NER datasets in BioBERT's layout (the downstream task in miniature)")
        demo_ner.write_ner_datasets(kb, root / NER_DIR, seed)  # each file replaced atomically
        log("demo: the ceiling at entity positions of the eval split")
        ceiling = split_ceiling(
            xml_dir / MENTIONS_NAME,
            records,
            load_tokenizer(str(tok_dir)),
            kb.words,
            max_len=manifest.max_len,
            eval_fraction=manifest.eval_fraction,
        )
        atomic_write_json(kb_file, {**kb.to_dict(), "tokenizer": tokenizer, "ceiling": ceiling})
    train, held = manifest.splits["train"], manifest.splits["eval"]
    ceiling = json.loads(kb_file.read_text())["ceiling"]
    log(
        f"demo: ready in {shards}: {train.samples} train samples in {len(train.shards)} shards, "
        f"{held.samples} eval samples, {train.tokens + held.tokens:,} tokens; best possible "
        f"accuracy at the {ceiling['entity_positions']} entity positions of the eval split "
        f"{ceiling['entity_acc']:.3f} ({kb_file})"
    )
    return shards


def built_kind(root: Path) -> str | None:
    """The tokenizer kind the demo in `root` was built with (a demo that predates the kinds is
    a WordPiece one), or None when nothing is built there."""
    for record in (root / MARK, root / XML_DONE):
        if record.is_file():
            return json.loads(record.read_text()).get("tokenizer", "wordpiece")
    return None


def _remove_previous_build(root: Path) -> None:
    """Remove what an earlier build made, for a build with other settings (or after one that
    stopped while generating): the demo's own files only, each known by its name.
    NOTE: knowledge.json and the xml mark go first, so a crash on the way leaves a build that
    says it is incomplete. The tokenizer's files and the NER datasets are replaced by name when
    remade (tokenizer.json goes so that it is remade), the shard run by its manifest."""
    (root / KNOWLEDGE_NAME).unlink(missing_ok=True)
    (root / XML_DONE).unlink(missing_ok=True)
    for folder, own in (
        (root / "xml", _XML_FILE),
        (root / "records", _RECORDS_FILE),
        (root / "records" / ".parts", _PARTS_FILE),
    ):
        for f in folder.iterdir() if folder.is_dir() else ():
            if own.fullmatch(f.name) and f.is_file():
                f.unlink()
    (root / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)
    clear_run(root / "shards")


def main(args: argparse.Namespace) -> int:
    output = args.output or DEFAULT_OUTPUTS[args.tokenizer]
    build_demo(output, args.articles, args.files, args.workers, args.seed, tokenizer=args.tokenizer)
    return 0


if __name__ == "__main__":
    from data_pipeline.__main__ import main as cli

    sys.exit(cli(["demo", *sys.argv[1:]]))
