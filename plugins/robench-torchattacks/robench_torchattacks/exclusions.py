"""torchattacks' attack classes robench-torchattacks leaves out, and why (registered as
exclusions: a benchmark that asks for one gets the reason)."""

from __future__ import annotations

_L0 = "an L0 attack (changes few pixels, by any amount): robench threat models are L∞ or L2"

#: torchattacks' attack classes that are not registered, with the reason for each
EXCLUDED: dict[str, str] = {
    "VANILA": "no attack: returns the images unchanged (every robench row has the clean "
    "accuracy already)",
    "GN": "adds Gaussian noise of a fixed standard deviation, with no ε: not bounded in L∞ or L2 "
    "(robench's 'noise' is the ε-bounded random baseline)",
    "EADL1": "elastic-net attack keeping the adversarial with the smallest L1 distance: an L1 "
    "threat model",
    "EADEN": "torchattacks 3.5's EAD optimises a parameter sharing memory with its copy of the "
    "clean images: its first step moves the point it measures from, and its results leave "
    "[0, 1] (by up to 0.07 on digits)",
    "JSMA": _L0 + "; targeted only (a target class per example)",
    "SparseFool": _L0,
    "OnePixel": _L0,
    "Pixle": "rearranges patches of pixels (an L0 attack, by any amount): robench threat models "
    "are L∞ or L2",
    "MultiAttack": "a wrapper of attack objects built in Python: list the attacks in the "
    "benchmark instead ([evaluation] cascade = true runs each on the examples the earlier ones "
    "left robust)",
    "LGV": "a transfer attack that first trains surrogate models on a training DataLoader: "
    "needs a second model and the training data",
}

__all__ = ["EXCLUDED"]
