"""Which ART evasion attacks and preprocessing defences robench adapts, and why the rest not.

Importing this module does not import ART. An attack class of ``art.attacks.evasion``
is either

- *budgeted* (:data:`BUDGETED`): it takes ``eps`` (and ``norm``, if it works in several norms);
  robench passes ε and the norm of its threat model;
- a *minimisation* attack (:data:`MINIMISING`): it looks for the smallest adversarial
  perturbation and has no fixed ε (``minimizes = True`` in robench);
- excluded (:data:`EXCLUDED`, with a reason).

A class in none of them (a newer ART) is adapted automatically when it takes ``eps`` and works
with a ``PyTorchClassifier``, else skipped (see :func:`robench_art.attacks.classify`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from robench_art.workarounds import geoda_workarounds, quiet_attacker, quiet_sub_attacks, zoo_batch

LINF_L2 = ("linf", "l2")


@dataclass(frozen=True)
class AttackSpec:
    """How one ART attack class is adapted."""

    #: robench norms it supports (for a class with a ``norm`` parameter: those it accepts)
    norms: tuple[str, ...] = LINF_L2
    #: a minimisation attack: no fixed ε
    minimizes: bool = False
    #: small iteration counts for ``example_params`` (robench's contract test runs every attack)
    example: dict[str, Any] = field(default_factory=dict)
    #: ART keyword parameters robench does not expose (objects a benchmark file cannot give)
    skip: tuple[str, ...] = ()
    #: ART keyword parameters the adapter sets to a fixed value
    fixed: dict[str, Any] = field(default_factory=dict)
    #: keep ART's ``targeted`` parameter (AutoAttack: "also run targeted attacks against every
    #: other class", still an untargeted threat model); everywhere else it is forced False
    keep_targeted: bool = False
    #: Python modules ART needs for it beyond its own dependencies (skipped when missing)
    requires: tuple[str, ...] = ()
    #: ``batch_size`` is the number of examples attacked at once: default to the whole batch
    #: (else it is ART's inference batch for queries, and keeps ART's default)
    whole_batch: bool = True
    #: ART requires an estimator that outputs probabilities (softmax of the logits)
    probabilities: bool = False
    #: last adjustment of ART's keyword arguments (a workaround for an ART limitation)
    adjust: Callable[[dict[str, Any]], None] | None = None
    #: a context to run ART's ``generate`` in (a workaround for an ART limitation)
    context: Callable[[], contextlib.AbstractContextManager] | None = None
    #: called with the ART attack object once built
    built: Callable[[Any], None] | None = None


#: Attacks to a fixed budget ε (``eps``), in the norms given.
BUDGETED: dict[str, AttackSpec] = {
    "FastGradientMethod": AttackSpec(),
    "BasicIterativeMethod": AttackSpec(norms=("linf",), example={"max_iter": 2}),
    "ProjectedGradientDescent": AttackSpec(example={"max_iter": 2}),
    "ProjectedGradientDescentNumpy": AttackSpec(example={"max_iter": 2}),
    "ProjectedGradientDescentPyTorch": AttackSpec(example={"max_iter": 2}),
    "MomentumIterativeMethod": AttackSpec(example={"max_iter": 2}),
    "AutoProjectedGradientDescent": AttackSpec(example={"max_iter": 2, "nb_random_init": 1}),
    "AutoConjugateGradient": AttackSpec(example={"max_iter": 2, "nb_random_init": 1}),
    "RescalingAutoConjugateGradient": AttackSpec(example={"max_iter": 2, "nb_random_init": 1}),
    "SquareAttack": AttackSpec(example={"max_iter": 3, "nb_restarts": 1}),
    # ART's default AutoAttack: APGD-CE, APGD-DLR, DeepFool, Square (its own iteration counts);
    # no process pool (the estimator holds the model weakly and cannot be pickled)
    "AutoAttack": AttackSpec(
        skip=("attacks", "estimator_orig"),
        fixed={"parallel_pool_size": 0},
        keep_targeted=True,
        requires=("multiprocess",),
        built=quiet_sub_attacks,
    ),
    "UniversalPerturbation": AttackSpec(example={"max_iter": 1}, adjust=quiet_attacker),
    # the perturbation is ε times an L2-normalised direction
    "VirtualAdversarialMethod": AttackSpec(
        norms=("l2",), example={"max_iter": 1}, probabilities=True
    ),
}

#: Minimisation attacks: the smallest adversarial perturbation they find, whatever ε.
MINIMISING: dict[str, AttackSpec] = {
    "CarliniL2Method": AttackSpec(
        norms=("l2",),
        minimizes=True,
        example={"binary_search_steps": 2, "max_iter": 2, "max_halving": 2, "max_doubling": 2},
    ),
    "CarliniLInfMethod": AttackSpec(norms=("linf",), minimizes=True, example={"max_iter": 2}),
    "DeepFool": AttackSpec(norms=("l2",), minimizes=True, example={"max_iter": 3}),
    "NewtonFool": AttackSpec(norms=("l2",), minimizes=True, example={"max_iter": 3}),
    "BoundaryAttack": AttackSpec(
        norms=("l2",),
        minimizes=True,
        whole_batch=False,
        example={"max_iter": 2, "num_trial": 2, "sample_size": 2, "init_size": 3},
    ),
    "HopSkipJump": AttackSpec(
        minimizes=True,
        whole_batch=False,
        example={"max_iter": 2, "max_eval": 3, "init_eval": 2, "init_size": 3},
    ),
    # max_iter is its query budget (at least a few hundred)
    "GeoDA": AttackSpec(
        minimizes=True, whole_batch=False, example={"max_iter": 500}, context=geoda_workarounds
    ),
    "ZooAttack": AttackSpec(
        norms=("l2",),
        minimizes=True,
        example={"max_iter": 2, "binary_search_steps": 1, "nb_parallel": 3},
        adjust=zoo_batch,
    ),
    "SignOPTAttack": AttackSpec(
        norms=("l2",),
        minimizes=True,
        whole_batch=False,
        example={"max_iter": 2, "num_trial": 2, "query_limit": 3, "k": 2},
    ),
    # no ε: it adds ±epsilon steps along random pixel / DCT directions until the label flips;
    # ART processes one example at a time (batch_size must be 1)
    "SimBA": AttackSpec(
        norms=("l2",),
        minimizes=True,
        example={"max_iter": 3},
        fixed={"batch_size": 1},
        probabilities=True,
    ),
}

#: ART evasion attacks robench does not adapt, with the reason.
EXCLUDED: dict[str, str] = {
    # framework-specific variants
    "ProjectedGradientDescentTensorFlowV2": "TensorFlow-only implementation",
    "AdversarialPatchTensorFlowV2": "TensorFlow-only implementation (and a patch attack)",
    "FeatureAdversariesTensorFlowV2": "TensorFlow-only implementation",
    "MalwareGDTensorFlow": "TensorFlow-only attack on malware (PE file) classifiers",
    # not an Lp threat model on images
    "AdversarialPatch": "patch attack (unbounded patch, not an Lp perturbation)",
    "AdversarialPatchNumpy": "patch attack (unbounded patch, not an Lp perturbation)",
    "AdversarialPatchPyTorch": "patch attack (unbounded patch, not an Lp perturbation)",
    "AdversarialTexturePyTorch": "physical texture attack on video object trackers",
    "DPatch": "patch attack on object detectors",
    "RobustDPatch": "patch attack on object detectors",
    "GRAPHITEBlackbox": "physical patch attack (masks and transforms, not an Lp perturbation)",
    "GRAPHITEWhiteboxPyTorch": "physical patch attack (masks and transforms, not an Lp "
    "perturbation)",
    "LaserAttack": "physical laser-beam attack (not an Lp perturbation)",
    "OverloadPyTorch": "latency attack on YOLO object detectors",
    "SNAL": "attack on object detectors (patches collected from other images)",
    "OverTheAirFlickeringPyTorch": "video attack (flickering frames)",
    "FrameSaliencyAttack": "video attack; also needs another attack object",
    "CarliniWagnerASR": "audio attack on speech recognition",
    "ImperceptibleASR": "audio attack on speech recognition",
    "ImperceptibleASRPyTorch": "audio attack on speech recognition",
    "LowProFool": "attack on tabular data (weighted Lp with feature importance)",
    "DecisionTreeAttack": "needs a scikit-learn decision tree classifier",
    "HighConfidenceLowUncertainty": "needs a GPy Gaussian process classifier",
    "SpatialTransformation": "rotations and translations, not an Lp perturbation",
    "Wasserstein": "Wasserstein threat model, not L∞ or L2",
    "ShadowAttack": "perceptual (total variation and colour) attack, not an Lp perturbation",
    "CompositeAdversarialAttackPyTorch": "semantic attack (hue, saturation, rotation, "
    "brightness, contrast) combined with L∞",
    # L0 / L1 attacks
    "SaliencyMapMethod": "L0 attack (JSMA changes few pixels fully)",
    "CarliniL0Method": "L0 attack",
    "PixelAttack": "L0 attack (one or few pixels)",
    "ElasticNet": "L1 attack (EAD: elastic-net regularised, L1 decision rule by default)",
    "ThresholdAttack": "L∞ threshold in integer 0-255 pixel steps found by evolutionary search, "
    "not a float ε (and its default CMA-ES needs the cma package)",
    "BrendelBethgeAttack": "ART's version asserts that its random initialisation found an "
    "adversarial starting point for every example of the batch, so one robust example fails the "
    "whole batch (and it needs numba)",
    # needs targets or extra objects
    "TargetedUniversalPerturbation": "targeted attack: needs target labels",
    "FeatureAdversariesNumpy": "needs guide images and a layer to match (y is a target "
    "representation, not labels)",
    "FeatureAdversariesPyTorch": "needs guide images and a layer to match (y is a target "
    "representation, not labels)",
}


@dataclass(frozen=True)
class DefenceSpec:
    """How one ART preprocessing defence is adapted."""

    #: ART parameters the adapter sets (robench images are N×C×H×W)
    fixed: dict[str, Any] = field(default_factory=dict)
    #: its exact input gradient: "zero" (piecewise constant) or "median" (torch median filter)
    gradient: str = "zero"
    #: parameters for robench's defense contract test
    example: dict[str, Any] = field(default_factory=dict)


#: ART preprocessing defences adapted as robench defenses.
DEFENCES: dict[str, DefenceSpec] = {
    "JpegCompression": DefenceSpec(fixed={"channels_first": True}, gradient="zero"),
    "FeatureSqueezing": DefenceSpec(gradient="zero"),
    "SpatialSmoothing": DefenceSpec(fixed={"channels_first": True}, gradient="median"),
}

#: ART preprocessing defences robench does not adapt, with the reason.
EXCLUDED_DEFENCES: dict[str, str] = {
    "SpatialSmoothingPyTorch": "same defence as art.SpatialSmoothing (whose true gradient "
    "robench computes with its own torch median filter); needs kornia and pads differently",
    "SpatialSmoothingTensorFlowV2": "TensorFlow-only implementation",
    "TotalVarMin": "random pixel mask (not deterministic), an L-BFGS solve per image and "
    "channel on every forward pass (too slow to train through), no true gradient available",
    "ThermometerEncoding": "changes the number of input channels (C × num_space): the model "
    "would have to be built for another input shape",
    "PixelDefend": "needs a trained PixelCNN model",
    "GaussianAugmentation": "training-time data augmentation, not an input transformation",
    "LabelSmoothing": "transforms labels, not inputs",
    "CutMix": "training-time data augmentation (mixes labels)",
    "CutMixPyTorch": "training-time data augmentation (mixes labels)",
    "CutMixTensorFlowV2": "training-time data augmentation (mixes labels)",
    "Cutout": "training-time data augmentation",
    "CutoutPyTorch": "training-time data augmentation",
    "CutoutTensorFlowV2": "training-time data augmentation",
    "Mixup": "training-time data augmentation (mixes labels)",
    "MixupPyTorch": "training-time data augmentation (mixes labels)",
    "MixupTensorFlowV2": "training-time data augmentation (mixes labels)",
    "Mp3Compression": "audio defence",
    "Mp3CompressionPyTorch": "audio defence",
    "Resample": "audio defence",
    "VideoCompression": "video defence",
    "VideoCompressionPyTorch": "video defence",
}
