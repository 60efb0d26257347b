"""Facts on the bottom floor: the numbers the command line needs before anything heavy is imported (it
parses arguments first), read by the floors above (published checkpoint limits, training data loading)."""
import os

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048
"""Input sizes in pixels a VOneNet may be built for: 2048 is 9x the published 224."""

DEFAULT_WORKERS = min(8, os.cpu_count() or 1)
"""Data-loading processes for ImageNet-style folders."""
