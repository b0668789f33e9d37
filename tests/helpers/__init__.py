"""What several test files share: tiny models and checkpoints (``models``), images and image
folders (``images``), tiny training runs (``training``), the CLI in-process and in subprocesses
(``cli``, ``processes``), the dense reference rollouts (``rollout_reference``), the figures
a plot function hands to matplotlib (``figures``) and two-sample statistics (``stats``).

A test file imports from here (or gets a fixture from ``tests/conftest.py``), never from another
test file; ``tests/test_test_layout.py`` keeps it so.
"""
