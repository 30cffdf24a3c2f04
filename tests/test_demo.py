"""The embedded demo corpus builds offline through the pipeline's own commands, once.

.venv/bin/python -m pytest tests/test_demo.py -q
"""

from __future__ import annotations

import json

from data_pipeline.demo import DEMO_MAX_LEN, build_demo
from data_pipeline.manifest import Manifest, load_tokenizer, tokenizer_info


def test_demo_builds_once_and_is_consistent(tmp_path):
    out = tmp_path / "demo"
    shards = build_demo(out, articles=300, files=3, workers=1, log=lambda *_: None)
    manifest = Manifest.load(shards)
    assert manifest.max_len == DEMO_MAX_LEN and manifest.mode == "truncate"
    assert manifest.splits["train"].samples > 0 and manifest.splits["eval"].samples > 0
    # The shards record the demo tokenizer, so the loader's tokenizer check accepts them.
    manifest.check_tokenizer(tokenizer_info(load_tokenizer(str(out / "tokenizer"))))
    report = json.loads((out / "records" / "report.json").read_text())
    assert report["deletions"] > 0 and report["duplicates"] > 0  # the update file did its work

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    messages: list[str] = []
    build_demo(out, articles=300, files=3, workers=1, log=messages.append)
    assert not any("generating" in m or "training" in m for m in messages)
    changed = [p for p, t in stamps.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert not [p for p in changed if p.suffix in (".tar", ".gz") or p.name == "tokenizer.json"]
