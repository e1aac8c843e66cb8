"""The JSON Schema of a benchmark file (``robench schema``), for editors that complete and check
TOML from a schema (e.g. Taplo / Even Better TOML, with a ``#:schema`` directive or an
association in its settings).

Built from the same pydantic models that validate a file (:mod:`robench.schema`,
:class:`robench.training_config.TrainingConfig`) and from each registered plugin's ``Params``: a
``[dataset]``, ``[model]``, ``[[defenses]]`` or ``[[attacks]]`` table is one of the registered
plugins of its kind, selected by its ``name``, with that plugin's parameters beside robench's
own keys (``label``, ``seeds``, ``eps``, ...). The schema describes; :func:`robench.config.
load_benchmark` still decides (cross-field rules, plugin-specific checks).
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from robench.registry import Kind, Registry
from robench.schema import AttackTable, BenchmarkFile, DefenseTable, PluginTable
from robench.training_config import TrainingConfig

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
#: the keys robench reads in each kind's table, besides the plugin's parameters
TABLES: dict[Kind, type[PluginTable]] = {
    "dataset": PluginTable,
    "model": PluginTable,
    "defense": DefenseTable,
    "attack": AttackTable,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def benchmark_schema(registry: Registry) -> dict[str, Any]:
    """The JSON Schema of a benchmark file, with every plugin of ``registry``."""
    entries = {kind: registry.entries(kind) for kind in TABLES}  # imports every plugin
    models: list[tuple[type[BaseModel], str]] = [
        (BenchmarkFile, "validation"),
        (TrainingConfig, "validation"),
    ]
    for kind_entries in entries.values():
        models += [(e.cls.Params, "validation") for e in kind_entries]
    refs, top = models_json_schema(models, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})

    def name(model: type[BaseModel]) -> str:  # its key in $defs
        return refs[(model, "validation")]["$ref"].rsplit("/", 1)[1]

    training = _ref(name(TrainingConfig))
    schema = copy.deepcopy(defs[name(BenchmarkFile)])
    schema["properties"]["training"] = training
    for kind, table in TABLES.items():
        base = defs[table.__name__]
        variants = []
        for e in entries[kind]:
            params = defs[name(e.cls.Params)]
            own = {k: v for k, v in base.get("properties", {}).items() if k != "name"}
            if kind == "defense":
                own["training"] = training
                own["model"] = _ref("ModelTable")
            variants.append(
                {
                    "type": "object",
                    "title": e.name,
                    "description": e.description,
                    "properties": {
                        "name": {"const": e.name, "description": e.description},
                        **own,
                        **params.get("properties", {}),
                    },
                    "required": sorted(
                        {"name", *base.get("required", []), *params.get("required", [])}
                    ),
                    "additionalProperties": False,
                }
            )
        defs[f"{kind.capitalize()}Table"] = {
            "description": f"a {kind}: one of the registered {kind} plugins, by name",
            "oneOf": variants,
        }
    schema["properties"]["dataset"] = _ref("DatasetTable")
    schema["properties"]["model"] = _ref("ModelTable")
    schema["properties"]["defenses"] = {"type": "array", "items": _ref("DefenseTable")}
    schema["properties"]["attacks"] = {"type": "array", "items": _ref("AttackTable")}
    schema["$defs"] = defs
    schema["$schema"] = SCHEMA_URI
    schema["title"] = "robench benchmark"
    return schema
