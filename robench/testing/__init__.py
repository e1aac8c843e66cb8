"""robench's contract checks, for a plugin's own test suite.

robench holds every plugin it loads to one contract per kind; these are the checks robench
runs on its own plugins, callable from any pytest suite::

    from robench.testing import check_attack, check_dataset, check_defense, check_model

    from my_plugin import MyAttack, MyDataset, MyDefense, MyModel

    def test_my_attack():
        check_attack(MyAttack)               # its example_params
        check_attack(MyAttack, steps=3)      # these parameters, on top of example_params

    def test_my_defense():
        check_defense(MyDefense, beta=2.0)

    def test_my_model():
        check_model(MyModel)

    def test_my_dataset(tmp_path):
        check_dataset(MyDataset, root=tmp_path, ...)  # a data root with (a piece of) the data

Each function returns nothing when the plugin passes and raises :class:`ContractViolation`, an
``AssertionError`` whose message is one line naming the plugin and what broke (the plugin's
own exception, if it raised, is the ``__cause__``). The tiny model and data are included and
need no download: scikit-learn's bundled 8×8 digits (:func:`tiny_data`, also in RGB) and a
small CNN with batch norm and dropout trained on them in about a second (:func:`tiny_model`).

- :func:`check_attack`: registration, norms, parameters; the attack contract (ε-ball, bounds,
  no NaN, the model and the batch untouched, modes and ``requires_grad`` restored) in every
  norm, float32 and float64; reproducibility under robench's seeding, no reseeding of the
  global generators, no state carried between calls; it fools the tiny model at a large
  budget; ``cost()``.
- :func:`check_defense`: ``fit`` trains a small CNN on 400 digits into a module that returns
  logits and learns; per-epoch progress; the same seed trains the same weights; ``restore``
  rebuilds ``fit``'s module so that stored weights load into it exactly.
- :func:`check_model`: shapes, finite logits, the dataset's normalisation inside, input
  gradients for attacks, trainable, deterministic in eval mode, its ``state_dict`` complete
  (what the store saves and loads), mismatched shapes refused in one line.
- :func:`check_dataset`: ``check`` and ``info`` (shapes, classes, statistics that match the
  images), both splits (float32 images in the bounds, int64 labels, ``test_size``), fresh
  copies on every ``load``, one-line ConfigErrors for a data root without the data.

Parameters go to the plugin's constructor as keyword arguments, on top of the class's
``example_params``; the few options of a check are keyword-only and never passed on:
``check_attack(..., fools=False)`` (an attack not meant to fool anything on its own, e.g. a
noise baseline), ``check_attack(..., reproducible=False)`` (one wrapping a library that draws
from unseeded generators of its own), ``check_model(..., info=...)`` (build it for that
dataset only), ``check_model(..., normalizes=False)``, ``check_dataset(..., root=...)``.
"""

from robench.testing._common import ContractViolation
from robench.testing._tiny import TinyNet, tiny_data, tiny_model
from robench.testing.attacks import check_attack
from robench.testing.datasets import check_dataset
from robench.testing.defenses import check_defense
from robench.testing.models import check_model

__all__ = [
    "ContractViolation",
    "TinyNet",
    "check_attack",
    "check_dataset",
    "check_defense",
    "check_model",
    "tiny_data",
    "tiny_model",
]
