"""Which torchattacks attacks robench can use, in which norms and modes, and why the rest not.

Written out for torchattacks 3.5 and checked against the installed version by the plugin's
tests, so that registering the attacks imports neither torchattacks nor anything heavy: the
library loads the first time an attack runs. Each :class:`Spec` lists the keyword parameters of
the torchattacks class that a benchmark may set, with torchattacks' defaults; those the adapter
sets are not listed: the model, ``eps`` (or PIFGSM's ``max_epsilon``) and ``norm`` from the
threat model, ``n_classes`` from the model's output, ``verbose`` (off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from robench_torchattacks.exclusions import EXCLUDED
from robench_torchattacks.fields import (
    ALPHA,
    BATCH_MAX,
    BETA_BOUND,
    DECAY,
    DIVERSITY,
    DIVISION,
    EOT,
    KAPPA,
    LR,
    NOISE_BATCH,
    NOISE_SD,
    NOISE_TYPE,
    RANDOM_START,
    RESIZE,
    RESTARTS,
    RHO,
    SAMPLES_N,
    SEED,
    STEPS,
    Fld,
    fld,
)

Kind = Literal["budget", "minimisation"]


@dataclass(frozen=True)
class Spec:
    """How one torchattacks class is adapted."""

    #: the torchattacks class name (the robench name is ``torchattacks.<name>``)
    name: str
    norms: tuple[str, ...]
    #: one line: what the attack is (``robench list`` shows it)
    summary: str
    #: the keyword parameters exposed, with torchattacks' defaults
    params: dict[str, tuple[Fld, Any]]
    #: small values for robench's contract checks (``example_params``)
    example: dict[str, Any] = field(default_factory=dict)
    #: ε-bounded, or a minimisation attack (no ε: scored at every ε by projection)
    kind: Kind = "budget"
    #: the keyword that takes ε (None: a minimisation attack, no ε)
    eps_arg: str | None = "eps"
    #: takes ``norm="Linf"`` / ``"L2"``
    norm_arg: bool = False
    #: takes ``n_classes`` (set from the model's output)
    n_classes: bool = False
    #: reseeds torch's generator with its ``seed`` parameter (run under ``fork_rng``)
    seeded: bool = False
    #: its projection kernels are built for 3 channels (RGB images only)
    rgb_only: bool = False
    #: parameters measured in image units, like ε (converted with it for bounds other than
    #: [0, 1]); ``alpha`` always is
    image_units: tuple[str, ...] = ()
    single_step: bool = False
    gradient_free: bool = False
    #: the fewest classes it works with, from the parameters (DLR losses need 3, targeted 4)
    min_classes: Callable[[dict[str, Any]], int] = lambda p: 2
    #: rough cost per example in forward-backward passes, from the parameters
    cost: Callable[[dict[str, Any]], float] = lambda p: float(p.get("steps", 1))

    @property
    def step_ratio(self) -> float | None:
        """torchattacks' default ``alpha / eps``: robench's default step scales with ε."""
        if "alpha" not in self.params:
            return None
        return self.params["alpha"][1] / EPS_DEFAULT.get(self.name, 8 / 255)


#: torchattacks' default ε where it is not 8/255 (the step ratio is taken from it)
EPS_DEFAULT = {"PGDL2": 1.0, "PGDRSL2": 1.0, "SPSA": 0.3, "PIFGSM": 16 / 255, "PIFGSMPP": 16 / 255}

_LINF, _BOTH, _L2 = ("linf",), ("linf", "l2"), ("l2",)
_A = 2 / 255  # torchattacks' default step


def _pgd_family(name: str, summary: str, extra: dict[str, tuple[Fld, Any]], **kw: Any) -> Spec:
    params = {"alpha": (ALPHA, kw.pop("alpha", _A)), "steps": (STEPS, 10), **extra}
    example = {"steps": 2} | kw.pop("example", {})
    return Spec(name, kw.pop("norms", _LINF), summary, params, example, **kw)


_MOMENTUM = {"decay": (DECAY, 1.0)}
_DI = {"resize_rate": (RESIZE, 0.9), "diversity_prob": (DIVERSITY, 0.5)}
_SMOOTH = {
    "noise_type": (NOISE_TYPE, "guassian"),
    "noise_sd": (NOISE_SD, 0.5),
    "noise_batch_size": (NOISE_BATCH, 5),
    "batch_max": (BATCH_MAX, 2048),
}
_VAR = {"decay": (DECAY, 1.0), "N": (SAMPLES_N, 5), "beta": (BETA_BOUND, 1.5)}
_APGD = {
    "steps": (STEPS, 10),
    "n_restarts": (RESTARTS, 1),
    "seed": (SEED, 0),
    "eot_iter": (EOT, 1),
    "rho": (RHO, 0.75),
}

SPECS: tuple[Spec, ...] = (
    Spec(
        "FGSM",
        _LINF,
        "FGSM (Goodfellow et al. 2015): one signed-gradient step of ε",
        {},
        single_step=True,
        cost=lambda p: 1.0,
    ),
    Spec(
        "FFGSM",
        _LINF,
        "Fast FGSM (Wong et al. 2020): a random start, then one signed step of alpha",
        {"alpha": (ALPHA, 10 / 255)},
        single_step=True,
        cost=lambda p: 1.0,
    ),
    _pgd_family("BIM", "BIM / I-FGSM (Kurakin et al. 2017): iterated signed steps", {}),
    _pgd_family("RFGSM", "R+FGSM (Tramèr et al. 2018): a random step of alpha, then steps", {}),
    _pgd_family(
        "PGD",
        "PGD (Madry et al. 2018) on the cross-entropy",
        {"random_start": (RANDOM_START, True)},
    ),
    _pgd_family(
        "EOTPGD",
        "PGD with expectation over transformation (Athalye et al. 2018)",
        {"eot_iter": (EOT, 2), "random_start": (RANDOM_START, True)},
        cost=lambda p: float(p["steps"] * p["eot_iter"]),
    ),
    _pgd_family("TPGD", "TRADES' PGD (Zhang et al. 2019): maximises the KL divergence", {}),
    _pgd_family("MIFGSM", "MI-FGSM (Dong et al. 2018): momentum iterative FGSM", _MOMENTUM),
    _pgd_family("NIFGSM", "NI-FGSM (Lin et al. 2020): Nesterov iterative FGSM", _MOMENTUM),
    _pgd_family(
        "UPGD",
        "PGD with a choice of loss, momentum and EOT (torchattacks' Ultimate PGD)",
        {
            "random_start": (RANDOM_START, False),
            "loss": (fld(Literal["ce", "margin", "dlr"], "loss to maximise"), "ce"),
            "decay": (DECAY, 1.0),
            "eot_iter": (EOT, 1),
        },
        cost=lambda p: float(p["steps"] * p["eot_iter"]),
        min_classes=lambda p: 3 if p["loss"] == "dlr" else 2,
    ),
    _pgd_family(
        "DIFGSM",
        "DI²-FGSM (Xie et al. 2019): input diversity (random resize and pad)",
        {"decay": (DECAY, 0.0), **_DI, "random_start": (RANDOM_START, False)},
    ),
    _pgd_family(
        "TIFGSM",
        "TI-FGSM (Dong et al. 2019): translation-invariant, gradients smoothed by a kernel",
        {
            "decay": (DECAY, 0.0),
            "kernel_name": (
                fld(Literal["gaussian", "linear", "uniform"], "smoothing kernel"),
                "gaussian",
            ),
            "len_kernel": (fld(int, "kernel size in pixels", ge=1), 15),
            "nsig": (fld(float, "Gaussian kernel's radius in standard deviations", gt=0), 3),
            **_DI,
            "random_start": (RANDOM_START, False),
        },
        rgb_only=True,
    ),
    _pgd_family(
        "Jitter",
        "Jitter (Schwinn et al. 2021): PGD on a rescaled, noisy softmax",
        {
            "scale": (fld(float, "logit scale of the softmax", gt=0, allow_inf_nan=False), 10),
            "std": (fld(float, "noise added to the softmax", ge=0, allow_inf_nan=False), 0.1),
            "random_start": (RANDOM_START, True),
        },
    ),
    _pgd_family(
        "PGDRS",
        "PGD against randomized smoothing (Salman et al. 2019), L∞",
        _SMOOTH,
        cost=lambda p: float(p["steps"] * p["noise_batch_size"]),
        example={"noise_batch_size": 2},
        image_units=("noise_sd",),
    ),
    _pgd_family(
        "SINIFGSM",
        "SI-NI-FGSM (Lin et al. 2020): Nesterov momentum over scaled copies",
        {"decay": (DECAY, 1.0), "m": (fld(int, "scaled copies per step", ge=1), 5)},
        cost=lambda p: float(p["steps"] * p["m"]),
    ),
    _pgd_family(
        "VMIFGSM",
        "VMI-FGSM (Wang & He 2021): momentum with gradient variance tuning",
        _VAR,
        cost=lambda p: float(p["steps"] * (p["N"] + 1)),
    ),
    _pgd_family(
        "VNIFGSM",
        "VNI-FGSM (Wang & He 2021): Nesterov momentum with gradient variance tuning",
        _VAR,
        cost=lambda p: float(p["steps"] * (p["N"] + 1)),
    ),
    _pgd_family(
        "PGDL2",
        "PGD (Madry et al. 2018) in L2: normalised gradient steps",
        {"random_start": (RANDOM_START, True), "eps_for_division": (DIVISION, 1e-10)},
        norms=_L2,
        alpha=0.2,
    ),
    _pgd_family(
        "PGDRSL2",
        "PGD against randomized smoothing (Salman et al. 2019), L2",
        {**_SMOOTH, "eps_for_division": (DIVISION, 1e-10)},
        norms=_L2,
        alpha=0.2,
        cost=lambda p: float(p["steps"] * p["noise_batch_size"]),
        example={"noise_batch_size": 2},
        image_units=("noise_sd",),
    ),
    Spec(
        "APGD",
        _BOTH,
        "Auto-PGD (Croce & Hein 2020), CE or DLR loss",
        {**_APGD, "loss": (fld(Literal["ce", "dlr"], "loss to maximise"), "ce")},
        {"steps": 2},
        norm_arg=True,
        seeded=True,
        cost=lambda p: float(p["steps"] * p["n_restarts"] * p["eot_iter"]),
        min_classes=lambda p: 3 if p["loss"] == "dlr" else 2,
    ),
    Spec(
        "APGDT",
        _BOTH,
        "targeted Auto-PGD (Croce & Hein 2020) towards every other class in turn",
        dict(_APGD),
        {"steps": 2},
        norm_arg=True,
        n_classes=True,
        seeded=True,
        cost=lambda p: 9.0 * p["steps"] * p["n_restarts"] * p["eot_iter"],
        min_classes=lambda p: 4,
    ),
    Spec(
        "FAB",
        _BOTH,
        "FAB (Croce & Hein 2020): minimal perturbations, kept when within ε",
        {
            "steps": (STEPS, 10),
            "n_restarts": (RESTARTS, 1),
            "alpha_max": (fld(float, "largest extrapolation step", ge=0, le=1), 0.1),
            "eta": (fld(float, "overshoot of each step", ge=1, allow_inf_nan=False), 1.05),
            "beta": (fld(float, "weight of the original image in the step", ge=0, le=1), 0.9),
            "seed": (SEED, 0),
            "multi_targeted": (fld(bool, "FAB-T: towards each other top class in turn"), False),
        },
        {"steps": 2},
        norm_arg=True,
        n_classes=True,
        seeded=True,
        cost=lambda p: float(p["steps"] * p["n_restarts"] * (9 if p["multi_targeted"] else 1)),
    ),
    Spec(
        "Square",
        _BOTH,
        "Square Attack (Andriushchenko et al. 2020): score-based random squares",
        {
            "n_queries": (fld(int, "model queries per example", ge=1), 5000),
            "n_restarts": (RESTARTS, 1),
            "p_init": (fld(float, "initial fraction of pixels changed", gt=0, le=1), 0.8),
            "loss": (fld(Literal["margin", "ce"], "loss to maximise"), "margin"),
            "resc_schedule": (fld(bool, "rescale the schedule to n_queries"), True),
            "seed": (SEED, 0),
        },
        {"n_queries": 20},
        norm_arg=True,
        seeded=True,
        gradient_free=True,
        cost=lambda p: p["n_queries"] * p["n_restarts"] / 2,
    ),
    Spec(
        "AutoAttack",
        _BOTH,
        "AutoAttack (Croce & Hein 2020): APGD-CE, APGD-T, FAB-T, Square",
        {
            "version": (
                fld(
                    Literal["standard", "plus", "rand"],
                    "standard: APGD-CE, APGD-T, FAB-T, Square (5000 queries), 10 iterations; "
                    "plus: more attacks and restarts; rand: APGD-CE and APGD-DLR with EOT 20",
                ),
                "standard",
            ),
            "seed": (SEED, None),
        },
        {"version": "rand"},
        norm_arg=True,
        n_classes=True,
        seeded=True,
        cost=lambda p: {"standard": 2700.0, "plus": 9000.0, "rand": 400.0}[p["version"]],
        min_classes=lambda p: 3 if p["version"] == "rand" else 4,
    ),
    Spec(
        "SPSA",
        _LINF,
        "SPSA (Uesato et al. 2018): gradients estimated from random finite differences",
        {
            "delta": (fld(float, "finite-difference step", gt=0, allow_inf_nan=False), 0.01),
            "lr": (LR, 0.01),
            "nb_iter": (STEPS, 1),
            "nb_sample": (fld(int, "random directions per iteration", ge=1), 128),
            "max_batch_size": (fld(int, "directions evaluated at once", ge=1), 64),
        },
        {"nb_iter": 10, "nb_sample": 16},
        image_units=("delta", "lr"),
        gradient_free=True,
        cost=lambda p: float(p["nb_iter"] * p["nb_sample"]),
    ),
    Spec(
        "PIFGSM",
        _LINF,
        "PI-FGSM (Gao et al. 2020): patch-wise iterative FGSM",
        {
            "num_iter_set": (STEPS, 10),
            "momentum": (DECAY, 1.0),
            "amplification": (fld(float, "step amplification factor", gt=0), 10.0),
            "prob": (fld(float, "probability of transforming an input", ge=0, le=1), 0.7),
        },
        {"num_iter_set": 2},
        eps_arg="max_epsilon",
        rgb_only=True,
        cost=lambda p: float(p["num_iter_set"]),
    ),
    Spec(
        "PIFGSMPP",
        _LINF,
        "PI-FGSM++ (Gao et al. 2020): patch-wise iterative FGSM with a projection factor",
        {
            "num_iter_set": (STEPS, 10),
            "momentum": (DECAY, 1.0),
            "amplification": (fld(float, "step amplification factor", gt=0), 10.0),
            "prob": (fld(float, "probability of transforming an input", ge=0, le=1), 0.7),
            "project_factor": (fld(float, "weight of the projected noise", ge=0), 0.8),
        },
        {"num_iter_set": 2},
        eps_arg="max_epsilon",
        rgb_only=True,
        cost=lambda p: float(p["num_iter_set"]),
    ),
    Spec(
        "CW",
        _L2,
        "Carlini-Wagner L2 (2017) with a fixed constant c: smallest adversarial found",
        {
            "c": (fld(float, "weight of the classification loss", gt=0), 1),
            "kappa": (KAPPA, 0),
            "steps": (STEPS, 50),
            "lr": (LR, 0.01),
        },
        {"steps": 20, "c": 10},
        eps_arg=None,
        kind="minimisation",
    ),
    Spec(
        "DeepFool",
        _L2,
        "DeepFool (Moosavi-Dezfooli et al. 2016), L2: steps to the linearised boundary",
        {
            "steps": (STEPS, 50),
            "overshoot": (fld(float, "overshoot past the boundary", ge=0), 0.02),
        },
        {"steps": 10},
        eps_arg=None,
        kind="minimisation",
        cost=lambda p: 10.0 * p["steps"],
    ),
)

#: the torchattacks class names this catalogue was written for (torchattacks 3.5)
KNOWN = frozenset({s.name for s in SPECS} | set(EXCLUDED))

__all__ = ["EXCLUDED", "KNOWN", "SPECS", "Fld", "Spec"]
