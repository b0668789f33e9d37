#!/usr/bin/env python
"""Train a Vision Transformer on an image folder. Same as `vit train`; see `python train.py -h`.

With no arguments it runs the quickstart: a built-in synthetic shapes dataset, a few minutes on CPU.
"""

import sys

from vit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]], prog="python train.py"))
