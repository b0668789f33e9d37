#!/usr/bin/env python
"""Evaluate a checkpoint on an image folder. Same as `vit evaluate`; see `python evaluate.py -h`."""

import sys

from vit.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]], prog="python evaluate.py"))
