"""`python -m trainer.export`: export students of a checkpoint, push exports to the Hub."""

import sys

from trainer.export.hf_export import main

sys.exit(main())
