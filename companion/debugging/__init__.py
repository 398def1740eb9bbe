r"""Checks that find out why training fails (chapter 9, "Debugging training"), one module per kind of check.

Each check answers one question a careful practitioner asks before trusting a run:

- :mod:`~companion.debugging.sanity`, before a real run. :func:`check_initial_loss`: does an untrained
  classifier start at the loss of a uniform guess, :math:`\ln C`? :func:`overfit_one_batch`: can the model
  and the loss drive the loss on one batch to near zero?
- :mod:`~companion.debugging.gradients`. :class:`GradientNormMonitor`: does each layer's gradient keep a
  sane size while ``fit`` trains? :func:`check_gradient`: does a hand-written ``backward`` agree with finite
  differences?
- :mod:`~companion.debugging.nonfinite`. :func:`find_nan_source`: which module or operation first produces
  ``nan`` or ``inf``?
- :mod:`~companion.debugging.curves`. :func:`read_learning_curves`: what do the training and validation
  curves of a :class:`History` say?
- :mod:`~companion.debugging.hygiene`. :func:`modules_in_training_mode`, :func:`yields_same_batches`,
  :func:`shared_samples`: is the evaluation honest (eval mode, the same validation data every time, no
  sample in two splits)?
- :mod:`~companion.debugging.mistakes`, the mistakes people really write in a loop.
  :func:`graph_size`, :func:`tensors_holding_graphs`: does a running total keep every batch's graph
  alive? :func:`optimizer_coverage`, :func:`unchanged_parameters`: does the optimizer train every
  parameter of the model, and only those? :func:`dims_summing_to_one`: is a softmax taken over the
  classes? :func:`batch_sizes`: is there a batch of one for batch norm? :func:`read_inplace_error`:
  what does autograd's in-place error name? :func:`samples_mixed_by_reshape`: did a ``view`` mix the
  samples? :func:`first_difference`: where do two runs with the same seed part?

Every name is importable from here, ``from companion.debugging import find_nan_source``, as chapter 9 does.
Imports run one way: these modules use :mod:`companion.train`, :mod:`companion.callbacks` and
:mod:`companion.history`, and none of them uses this package.
"""

from companion.debugging.curves import CurveReading, chance_of_a_perfect_score, read_learning_curves
from companion.debugging.gradients import (
    GradientCheck,
    GradientNormMonitor,
    GradientWarning,
    check_gradient,
    layer_gradient_norms,
)
from companion.debugging.hygiene import modules_in_training_mode, shared_samples, yields_same_batches
from companion.debugging.mistakes import (
    Difference,
    InplaceError,
    OptimizerCoverage,
    batch_sizes,
    dims_summing_to_one,
    first_difference,
    graph_size,
    optimizer_coverage,
    parameter_snapshot,
    read_inplace_error,
    samples_mixed_by_reshape,
    tensors_holding_graphs,
    unchanged_parameters,
)
from companion.debugging.nonfinite import NanSource, find_nan_source
from companion.debugging.sanity import InitialLoss, OverfitResult, check_initial_loss, overfit_one_batch

__all__ = [
    "CurveReading",
    "Difference",
    "GradientCheck",
    "GradientNormMonitor",
    "GradientWarning",
    "InitialLoss",
    "InplaceError",
    "NanSource",
    "OptimizerCoverage",
    "OverfitResult",
    "batch_sizes",
    "chance_of_a_perfect_score",
    "check_gradient",
    "check_initial_loss",
    "dims_summing_to_one",
    "find_nan_source",
    "first_difference",
    "graph_size",
    "layer_gradient_norms",
    "modules_in_training_mode",
    "optimizer_coverage",
    "overfit_one_batch",
    "parameter_snapshot",
    "read_inplace_error",
    "read_learning_curves",
    "samples_mixed_by_reshape",
    "shared_samples",
    "tensors_holding_graphs",
    "unchanged_parameters",
    "yields_same_batches",
]
