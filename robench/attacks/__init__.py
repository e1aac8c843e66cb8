"""Built-in attacks, registered through the same hook a third-party plugin uses."""

from robench import hookimpl


@hookimpl
def robench_register_attacks(register):
    from robench.attacks.fgsm import FGSM
    from robench.attacks.noise import RandomNoise
    from robench.attacks.pgd import PGD

    register(FGSM)
    register(PGD)
    register(RandomNoise)
