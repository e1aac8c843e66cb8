"""Import Foolbox once, without the deprecation warning it triggers in recent SciPy.

Foolbox 3.3 imports ``scipy.ndimage.filters`` (deprecated since SciPy 1.8): harmless, and not
something a robench user can act on, so that one warning is silenced while Foolbox loads.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings(
        "ignore", message=r".*scipy\.ndimage\.filters", category=DeprecationWarning
    )
    import foolbox.attacks  # noqa: F401
