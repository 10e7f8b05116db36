"""`python -m visionattn.train --config ... key=value ...`: the same as tools/train.py."""
import sys

from .cli import train_main

sys.exit(train_main(prog="python -m visionattn.train"))
