"""Check the learning regression test against the bugs it exists to catch (not collected by pytest).

    .venv/bin/python tests/mutate_learning.py       # about 2 minutes on 2 CPU cores

Each mutation is applied to trainer/distill/objectives.py in turn, tests/test_learning.py runs
against it, and the file is restored (also on Ctrl-C). Every mutation must make the test fail; the
exit code is 1 when one does not. The mutations:

- kd_weight_zero: the KD and soft cross-entropy terms weigh 0 (no logit distillation);
- teacher_logits_are_students: KD and soft CE compare the student's logits with themselves;
- layers_shifted: the attention and hidden terms read the teacher layer below the mapped one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "trainer" / "distill" / "objectives.py"
MUTATIONS = {
    "kd_weight_zero": (
        "loss = sum(self.weights[name] * value for name, value in terms.items())",
        "loss = sum((0.0 if name in ('kd', 'soft_ce') else self.weights[name]) * value "
        "for name, value in terms.items())",
    ),
    "teacher_logits_are_students": (
        "t[LOGITS], o.temperature)",
        "s[LOGITS].detach(), o.temperature)",
    ),
    "layers_shifted": (
        "        att = tuple(tuple(p) for p in section.attention_map or ())\n"
        "        hid = tuple(tuple(p) for p in section.hidden_map or ())",
        "        att = tuple((s, max(t - 1, 0)) for s, t in section.attention_map or ())\n"
        "        hid = tuple((s, max(t - 1, 0)) for s, t in section.hidden_map or ())",
    ),
}


def main() -> int:
    original = TARGET.read_text()
    survived = []
    try:
        for name, (old, new) in MUTATIONS.items():
            if original.count(old) < 1:
                print(f"{name}: {TARGET} no longer holds {old!r}; update this mutation")
                return 2
            TARGET.write_text(original.replace(old, new))
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "tests/test_learning.py"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            why = [line for line in done.stdout.splitlines() if line.startswith("E ")][:2]
            caught = done.returncode != 0
            print(f"{name}: {'caught' if caught else 'NOT CAUGHT'}", *why, sep="\n    ")
            if not caught:
                survived.append(name)
    finally:
        TARGET.write_text(original)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
