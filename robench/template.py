"""``robench plugin new NAME``: a working plugin distribution to start from.

It writes ``NAME/`` holding ``pyproject.toml`` (the ``robench`` entry point), ``README.md``, the
package with one attack (a signed-gradient step from a random start in the ε-ball: short, and
real enough to be scored), ``benchmark.toml`` (the quickstart's data and model against that
attack and robench's PGD) and ``tests/`` holding the contract test from :mod:`robench.testing`.
Nothing in it imports robench but :mod:`robench.api` and :mod:`robench.testing`.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

from robench.errors import ConfigError

_DIST = re.compile(r"^[A-Za-z][A-Za-z0-9]*([-_][A-Za-z0-9]+)*$")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"
description = "robench plugin: {module}.random-step"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["robench"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.robench]
{module} = "{module}"  # the plugin's name: ROBENCH_BLOCK_PLUGINS={module} skips it

[tool.setuptools]
packages = ["{module}"]
"""

PACKAGE = '''\
"""{dist}: a robench plugin with one attack, ``{module}.random-step``."""

from __future__ import annotations

import torch
from pydantic import Field

import robench
from robench.api import Attack, Params

__version__ = "0.1.0"


class RandomStep(Attack):
    """One signed-gradient step from a random start in the ε-ball (FGSM with a random start)."""

    name = "{module}.random-step"  # unique across all plugins
    norms = ("linf",)

    class Params(Params):  # typed parameters, validated before anything trains
        step: float = Field(1.25, gt=0, le=2, description="the step, as a fraction of ε")

    def run(self, model, x, y):  # model in eval mode, parameters frozen; input gradients only
        eps, (low, high) = self.threat.eps, self.threat.bounds
        start = (x + eps * (2 * torch.rand_like(x) - 1)).clamp(low, high).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(start), y)
        (grad,) = torch.autograd.grad(loss, start)
        adv = start.detach() + self.params.step * eps * grad.sign()
        return torch.min(torch.max(adv, x - eps), x + eps).clamp(low, high)


@robench.hookimpl
def robench_register_attacks(register):
    register(RandomStep)
'''

TEST = '''\
"""The attack holds to robench's contract (robench.testing runs robench's own checks)."""

from robench.testing import check_attack

from {module} import RandomStep


def test_random_step_keeps_the_contract():
    check_attack(RandomStep)


def test_random_step_with_a_smaller_step():
    check_attack(RandomStep, step=0.5)
'''

BENCHMARK = """\
# robench run benchmark.toml: the quickstart's digits and CNN, this plugin's attack beside PGD.
name = "{module}-demo"
output_dir = "results"

[dataset]
name = "digits"

[model]
name = "small-cnn"

[training]
epochs = 5
lr = 3e-3

[evaluation]
n_examples = 200

[[defenses]]
name = "standard"

[[attacks]]
name = "{module}.random-step"
eps = [0.1, 0.2]

[[attacks]]
name = "pgd"
eps = [0.1, 0.2]
steps = 10
"""

README = """\
# {dist}

A robench plugin: the attack `{module}.random-step` (one signed-gradient step from a random start
in the ε-ball). Written by `robench plugin new {dist}`.

```bash
pip install -e ".[test]"     # robench finds it through the `robench` entry point
robench list {module}.*      # listed
python -m pytest tests       # robench.testing holds it to robench's attack contract
robench run benchmark.toml   # scored beside robench's PGD on the digits
```
"""


def new_plugin(name: str, parent: Path) -> Path:
    """Write the plugin distribution ``name`` into ``parent/name``; return that folder.
    ConfigError (one line) for a name that cannot be a distribution and module name, or a
    folder that exists already."""
    if not _DIST.match(name):
        raise ConfigError(
            f"plugin name {name!r}: expected letters and digits, words joined by '-' or '_', "
            "starting with a letter (e.g. my-attacks)"
        )
    module = name.replace("-", "_").lower()
    if keyword.iskeyword(module):
        raise ConfigError(f"plugin name {name!r}: {module!r} is a Python keyword")
    folder = Path(parent) / name
    if folder.exists():
        raise ConfigError(f"{folder} exists already: choose another name or folder")
    fields = {"dist": name, "module": module}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{module}/__init__.py": PACKAGE,
        f"tests/test_{module}.py": TEST,
        "benchmark.toml": BENCHMARK,
    }
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.format(**fields))
    return folder
