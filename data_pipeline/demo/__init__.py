"""The demo corpus: generated PubMed citations from a hidden knowledge base (synth, knowledge), the
build of data/demo (build), its miniature NER datasets (ner)."""
