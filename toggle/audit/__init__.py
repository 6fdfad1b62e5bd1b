"""Stage 10a, audit: re-check a compressed model on prompts the search never saw.

    core.py   the audit of loaded models (teacher or free-running) and its results
    view.py   how `toggle audit` shows a result in the terminal
"""
from .core import (ENGINES, MODES, SPLITS, AuditResult, PromptAudit, PropertyAudit, audit_models, check_compatible,
                   check_engine, check_split, decode)
from .view import print_audit, verdict

__all__ = ["ENGINES", "MODES", "SPLITS", "AuditResult", "PromptAudit", "PropertyAudit", "audit_models", "check_compatible",
           "check_engine", "check_split", "decode", "print_audit", "verdict"]
