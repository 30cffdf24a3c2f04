"""`python -m trainer ...` is `python trainer/main.py ...` (one process; use the deepspeed
launcher for several ranks)."""

import sys

from trainer.main import main

sys.exit(main())
