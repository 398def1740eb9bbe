"""The companion package of the book *Training PyTorch models faster and better*.

Its modules follow the book's chapters: a chapter about losses imports from
:mod:`companion.losses`, the training-loop chapter from :mod:`companion.train`
(and its callbacks, checkpoints and history from :mod:`companion.callbacks`,
:mod:`companion.checkpoint` and :mod:`companion.history`). The helpers every
chapter starts with, and the loop, are importable from the top level.
"""

from companion.callbacks import EMAWeightAveraging, StochasticWeightAveraging  # chapter 8: weight averaging
from companion.device import default_device
from companion.history import History
from companion.lr_finder import lr_find as lr_find  # chapter 8: the learning-rate range test
from companion.seeding import seed_everything
from companion.significance import mcnemar, paired_bootstrap  # chapter 8: is one model better than another?
from companion.train import evaluate, fit

__all__ = [
    "EMAWeightAveraging",
    "History",
    "StochasticWeightAveraging",
    "default_device",
    "evaluate",
    "fit",
    "mcnemar",
    "paired_bootstrap",
    "seed_everything",
]
__version__ = "0.1.0"
