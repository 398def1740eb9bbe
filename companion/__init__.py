"""The companion package of the book *Training PyTorch models faster and better*.

Its modules follow the book's chapters: a chapter about losses imports from
:mod:`companion.losses`, the training-loop chapter from :mod:`companion.train`.
The two helpers every chapter starts with are importable from the top level.
"""

from companion.device import default_device
from companion.seeding import seed_everything
from companion.train import History, evaluate, fit

__all__ = ["History", "default_device", "evaluate", "fit", "seed_everything"]
__version__ = "0.1.0"
