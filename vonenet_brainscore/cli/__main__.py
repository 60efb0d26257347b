"""``python -m vonenet_brainscore.cli``: the same command line as ``vonenet-brainscore``."""
import sys

from . import main

sys.exit(main())
