"""The `vit` command: one module per command; argparse and printing live only here.

    main      the parser, logging set-up, and errors turned into one line and an exit code
    train, evaluate, predict, explain, export, attention_stats   one module per command
"""

from vit.cli.main import main, run

__all__ = ["main", "run"]
