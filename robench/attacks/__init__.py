"""Built-in attacks, registered through the same hook a third-party plugin uses."""

from robench import hookimpl


@hookimpl
def robench_register_attacks(register):
    from robench.attacks.apgd import APGD
    from robench.attacks.apgd_t import APGDT
    from robench.attacks.autoattack import AutoAttack
    from robench.attacks.fab import FAB
    from robench.attacks.fgsm import FGSM
    from robench.attacks.noise import RandomNoise
    from robench.attacks.pgd import PGD
    from robench.attacks.square import Square

    for attack in (FGSM, PGD, RandomNoise, APGD, APGDT, FAB, Square, AutoAttack):
        register(attack)
