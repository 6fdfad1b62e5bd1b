"""toggle: compress language models with Signal Temporal Logic guarantees.

    import toggle
    lm = toggle.load_model("smollm2-135m")
    toggle.compressible_modules(lm.model)

The pipeline modules, in order: load, prompts, trace, signals, specs, compress, cost,
search, export, audit, report.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import ToggleError  # noqa: E402
from .load import LoadedModel, load_model  # noqa: E402
from .modules import ModuleRef, compressible_modules  # noqa: E402
from .plan import Methods, ModuleSetting, Plan  # noqa: E402
from .units import Budget, parse_budget  # noqa: E402
from .compress import PlanApplier, collect_stats  # noqa: E402
from .cost import Cost, CostModel  # noqa: E402
from .export import load_compressed, write_gguf_artifact, write_toggle_artifact  # noqa: E402
from .prompts import PromptSuite, load_prompts  # noqa: E402
from .specs import SpecSet, load_specs  # noqa: E402
from .trace import Trace, build_trace  # noqa: E402
from .evaluate import Evaluation, Evaluator  # noqa: E402

__all__ = [
    "Budget", "LoadedModel", "Methods", "ModuleRef", "ModuleSetting", "Plan", "ToggleError",
    "compressible_modules", "load_model", "parse_budget",
    "Cost", "CostModel", "PlanApplier", "collect_stats", "load_compressed", "write_gguf_artifact",
    "write_toggle_artifact",
    "Evaluation", "Evaluator", "PromptSuite", "SpecSet", "Trace", "build_trace", "load_prompts", "load_specs",
]
