"""Built-in defenses, registered through the same hook a third-party plugin uses."""

from robench import hookimpl


@hookimpl
def robench_register_defenses(register):
    from robench.defenses.adversarial import AdversarialTraining
    from robench.defenses.checkpoint import Checkpoint
    from robench.defenses.fast_at import FastAT
    from robench.defenses.mart import MART
    from robench.defenses.mixed import MixedTraining
    from robench.defenses.pgd_at import PGDAT
    from robench.defenses.standard import StandardTraining
    from robench.defenses.trades import TRADES

    register(StandardTraining)
    register(AdversarialTraining)
    register(MixedTraining)
    register(FastAT)
    register(PGDAT)
    register(TRADES)
    register(MART)
    register(Checkpoint)
