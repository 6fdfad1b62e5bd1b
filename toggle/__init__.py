"""toggle: compress language models with Signal Temporal Logic guarantees.

    import toggle
    result = toggle.search("smollm2-135m", "100MB", trials=12)     # toggle.api: the whole pipeline
    lm = toggle.load_model("smollm2-135m")
    toggle.compressible_modules(lm.model)

The pipeline, in order: load, prompts, trace, signals, specs, compress, cost, search, formats,
audit, report (docs/architecture.md). Names are imported on first use, so `import toggle` (and the
command line's start, which installs its signal handlers first) does not wait for torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "search": "api", "apply": "api", "audit": "api", "report": "api",
    "ToggleError": "errors",
    "LoadedModel": "loaded", "load_model": "load",
    "ModuleRef": "modules", "compressible_modules": "modules",
    "Methods": "plan", "ModuleSetting": "plan", "Plan": "plan",
    "Budget": "units", "parse_budget": "units",
    "PlanApplier": "compress.apply", "collect_stats": "compress.calibrate",
    "Cost": "cost", "CostModel": "cost",
    "get_format": "formats", "read_artifact": "formats", "write_artifact": "api",
    "PromptSuite": "prompts", "load_prompts": "prompts",
    "SpecSet": "specs", "load_specs": "specs",
    "Trace": "trace", "build_trace": "trace",
    "Evaluation": "evaluate", "Evaluator": "evaluate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """PEP 562: the public names, imported from their module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'toggle' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
