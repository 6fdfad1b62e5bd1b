"""The `toggle` command line: a thin layer over the Python API (toggle.api).

Exit codes: 0 success, 1 no plan satisfies the specs / a property is violated, 2 bad input
(the message names the file, field or value and what would be valid), 130 interrupted.

SIGINT and SIGTERM save and exit 130 at any moment of a run. The handlers are installed before
the heavy libraries are imported, and the program (`run`) ends with os._exit once the command is
done and its output flushed: Python's own shutdown first puts every signal back to its default
action and then spends a second or more finalising torch and the rest, a window in which SIGTERM
used to kill the process (exit -15) after all its work was saved.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__, interrupts
from .errors import BAD_INPUT, INTERNAL_ERROR, INTERRUPTED, InvalidInput, ToggleError
from .files import atomic_write_json, check_output_file
from .units import format_bytes, format_reduction

EPILOG_EXIT = "exit codes: 0 success, 1 specs not satisfied, 2 bad input, 70 internal error, 130 interrupted"


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage already; keep its message on one line with the command."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(BAD_INPUT, f"{self.prog}: error: {message}\n(see {self.prog} --help)\n")


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device: cpu (the default), cuda, cuda:N or mps")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model directory or hub id to run its own Python code (off by default)")


def _add_confidence_option(p: argparse.ArgumentParser) -> None:
    # a string here: toggle.confidence.check_level says what is wrong with a bad one
    p.add_argument("--confidence", default="0.95", metavar="LEVEL",
                   help="level of the one-sided upper bound (Clopper-Pearson) on each held-out violation rate, "
                   "from 0.5 up to (not including) 1 (default: 0.95)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="toggle",
        description="Compress a language model and check with Signal Temporal Logic, on stated prompts "
        "with a stated confidence, that it still behaves like the original on the properties you care about.",
        epilog=EPILOG_EXIT,
    )
    parser.add_argument("--version", action="version", version=f"toggle {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    # search ---------------------------------------------------------------------------------
    p = sub.add_parser(
        "search",
        help="find the smallest per-layer compression plan that satisfies every property",
        description="Constrained Bayesian optimisation over per-layer bit-widths, pruning ratios and "
        "low-rank ranks: every property's STL robustness >= 0 and size <= budget are constraints, "
        "size (or FLOPs) is the objective. Writes plan.yaml, summary.json, trials.csv, pareto.csv, "
        "study.db, report.md/html and the compressed model (model/, unless --no-apply) to the run directory; "
        "running the same command again resumes (with other inputs it starts a new study and says why).",
        epilog=EPILOG_EXIT,
    )
    p.add_argument("model", metavar="MODEL",
                   help="built-in alias (smollm2-135m), .gguf file, model directory, or hub id")
    p.add_argument("--budget", required=True, metavar="SIZE",
                   help="size budget: 4GB, 3.5GiB, 512MB, 40MiB, plain bytes, or 4.5bpw "
                   "(bits per compressible weight); decimal units are powers of 1000, binary of 1024")
    p.add_argument("--specs", nargs="+", action="extend", metavar="PATH",
                   help=".stl files or directories of them (default: the shipped specs/)")
    p.add_argument("--prompts", metavar="FILE", help="prompt suite, YAML or JSONL (default: the shipped suite)")
    p.add_argument("--profile", default="default", metavar="search/NAME.yaml",
                   help="search profile: knobs, granularity, allowed values (default: search/default.yaml)")
    p.add_argument("--trials", type=int, metavar="N", help="number of trials (default: from the profile)")
    p.add_argument("--objective", choices=["size", "flops", "margin"], default="size",
                   help="size or flops: the cheapest plan satisfying every property (default: size); margin: the "
                   "most robust plan (largest minimum robustness margin) that fits the budget")
    p.add_argument("--relax", type=float, default=0.0, metavar="R",
                   help="loosen every threshold declared with `const` by the fraction R (e.g. 0.1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a spec constant, e.g. --set eps=0.2 (repeatable)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<model>-<budget>)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL shared by several workers (default: sqlite in the run directory)")
    p.add_argument("--study", metavar="NAME", help="study name inside the storage (default: derived from the run)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default: 0)")
    p.add_argument("--sampler", default="bo", metavar="NAME",
                   help="bo (constrained BoTorch, default), or a baseline: random, uniform (best "
                   "single setting for every group), allocator (measured-error allocation), greedy "
                   "(sensitivity allocation)")
    p.add_argument("--no-apply", dest="write_model", action="store_false",
                   help="do not write the winner's compressed model to RUN/model (toggle apply does it later)")
    _add_confidence_option(p)
    _add_model_options(p)
    p.set_defaults(func=_cmd_search)

    # apply ----------------------------------------------------------------------------------
    p = sub.add_parser("apply", help="write the compressed model a plan describes",
                       description="Apply PLAN (plan.yaml) to MODEL and write a real compressed artifact.",
                       epilog=EPILOG_EXIT)
    p.add_argument("plan", metavar="PLAN", help="plan.yaml written by toggle search")
    p.add_argument("model", metavar="MODEL", help="the model the plan was made for")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (toggle) or .gguf path")
    p.add_argument("--format", default=None, metavar="NAME",
                   help="toggle: packed safetensors + manifest (the default); gguf: llama.cpp-loadable file (the "
                        "default when --out ends in .gguf)")
    _add_model_options(p)
    p.set_defaults(func=_cmd_apply)

    # audit ----------------------------------------------------------------------------------
    p = sub.add_parser("audit", help="re-check a compressed model on prompts the search never saw",
                       description="Evaluate every property on ARTIFACT against its base model. Exit 0 when "
                       "every property holds on every audited prompt, 1 when one is violated, 2 for bad input.",
                       epilog=EPILOG_EXIT)
    p.add_argument("artifact", metavar="ARTIFACT", help="toggle artifact directory, .gguf file or model directory")
    p.add_argument("--base", metavar="MODEL", help="base model (default: the one recorded in the artifact)")
    p.add_argument("--specs", nargs="+", action="extend", metavar="PATH", help=".stl files (default: specs/)")
    p.add_argument("--prompts", metavar="FILE", help="prompt suite (default: the shipped suite)")
    p.add_argument("--split", default="heldout", choices=["heldout", "calibration", "confirmation", "all"],
                   help="which prompts to audit (default: heldout)")
    p.add_argument("--mode", choices=["teacher", "free"], default="teacher",
                   help="teacher: score on the base model's tokens; free: the compressed model generates")
    p.add_argument("--engine", choices=["torch", "llama.cpp"], default="torch",
                   help="what runs the compressed model: torch (default) or, for a .gguf file, llama.cpp itself "
                        "(teacher mode, logit signals; the torch scores are shown beside it). llama.cpp: "
                        "tools/build_llama_cpp.sh")
    p.add_argument("--threads", type=int, metavar="N", help="llama.cpp threads (default: the CPUs available, at most 8)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--relax", type=float, default=0.0, metavar="R", help="loosen every const threshold by R")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
                   help="override a spec constant (repeatable)")
    _add_confidence_option(p)
    _add_model_options(p)
    p.set_defaults(func=_cmd_audit)

    # specs check ----------------------------------------------------------------------------
    p = sub.add_parser("specs", help="work with .stl property files")
    specs_sub = p.add_subparsers(dest="specs_command", metavar="ACTION", parser_class=_Parser)
    c = specs_sub.add_parser("check", help="parse and check .stl files (no model needed)",
                             description="Report every error as FILE:LINE:COL: message. Exit 0 when all are valid, 2 otherwise.")
    c.add_argument("paths", nargs="+", metavar="PATH", help=".stl files or directories")
    c.set_defaults(func=_cmd_specs_check)
    p.set_defaults(func=lambda args: _usage(p))

    # signals ----------------------------------------------------------------------------------
    p = sub.add_parser("signals", help="list the signals specs can use, with meaning and formula")
    p.set_defaults(func=_cmd_signals)

    # report ----------------------------------------------------------------------------------
    p = sub.add_parser("report", help="rebuild report.md / report.html of a run directory",
                       description="Rebuild report.md, report.html, the PNG plots and operating_points/ of a search "
                       "run directory from its files alone (no model is loaded).", epilog=EPILOG_EXIT)
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--compare", nargs="+", action="extend", default=[], metavar="OTHER_RUN",
                   help="other run directories (baselines, --relax runs) to draw in the convergence plot and "
                   "take a relaxed operating point from")
    p.set_defaults(func=_cmd_report)

    # modules ----------------------------------------------------------------------------------
    p = sub.add_parser("modules", help="list a model's compressible modules (block, component, shape)")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_model_options(p)
    p.set_defaults(func=_cmd_modules)
    return parser


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return BAD_INPUT


# --- command handlers: parse arguments into API calls, nothing more -------------------------

def _cmd_search(args) -> int:
    result = api.search(
        args.model, args.budget, specs=args.specs, prompts=args.prompts, profile=args.profile, trials=args.trials,
        objective=args.objective, relax=args.relax, overrides=api.parse_overrides(args.overrides), out=args.out,
        storage=args.storage, study=args.study, seed=args.seed, sampler=args.sampler, device=args.device,
        trust_remote_code=args.trust_remote_code, progress=True, confidence=args.confidence,
        write_model=args.write_model,
    )
    for line in api.final_lines(result):
        print(line)
    return result.exit_code


def _cmd_apply(args) -> int:
    fmt = args.format or ("gguf" if str(args.out).lower().endswith(".gguf") else "toggle")
    info = api.apply(args.plan, args.model, args.out, format=fmt, device=args.device,
                     trust_remote_code=args.trust_remote_code)
    cost = info.cost
    rows = [
        ("accounted bytes", f"{cost.bytes:,} ({format_bytes(cost.bytes)})"),
        ("bytes on disk", f"{info.tensor_bytes_on_disk:,} tensor data; {info.weights_file_bytes:,} "
                          f"{info.path.name if info.fmt == 'gguf' else 'model.safetensors'} with its header"),
        ("whole artifact", f"{info.total_bytes:,} ({format_bytes(info.total_bytes)}, tokenizer and config included)"),
        ("16-bit dense model", f"{cost.base16_bytes:,} ({format_bytes(cost.base16_bytes)}): "
                               f"{format_reduction(cost.size_reduction)}, {cost.base16_bytes / cost.bytes:.2f}x"),
        ("FLOPs per token", f"{cost.flops_per_token:,} (dense {cost.base_flops_per_token:,}, "
                            f"{cost.flops_reduction:.2f}x fewer)"),
    ]
    if "imatrix" in info.meta:
        rows.append(("importance matrix", f"{info.meta['imatrix']['modules']} modules quantised with one "
                                          f"(calibration statistics)"))
    if info.meta.get("fallbacks"):
        rows.append(("type fallbacks", f"{len(info.meta['fallbacks'])} modules (rows not a multiple of the "
                                       f"type's block: llama.cpp's fallback rule)"))
    print(f"toggle: wrote {info.path} ({info.fmt} format)")
    for label, value in rows:
        print(f"  {label + ':':<20} {value}")
    if (info.meta.get("pre_tokenizer") or {}).get("note"):
        print(f"toggle: note: {info.meta['pre_tokenizer']['note']}")
    return 0


def _cmd_audit(args) -> int:
    if args.json:
        check_output_file(args.json, "--json")
    result = api.audit(args.artifact, base=args.base, specs=args.specs, prompts=args.prompts, split=args.split,
                       mode=args.mode, relax=args.relax, overrides=api.parse_overrides(args.overrides), device=args.device,
                       trust_remote_code=args.trust_remote_code, confidence=args.confidence, engine=args.engine,
                       threads=args.threads)
    api.print_audit(result)
    if args.json:
        try:
            atomic_write_json(args.json, result.to_dict())
        except OSError as e:
            raise InvalidInput(f"--json {args.json}: cannot be written ({e.strerror or e}); the audit above is "
                               f"complete, rerun with another path to keep it as JSON") from None
    return result.exit_code


def _cmd_specs_check(args) -> int:
    failed = False
    for path, errors in api.check_spec_files(args.paths).items():
        if errors:
            failed = True
            print("\n".join(errors), file=sys.stderr)
        else:
            print(f"{path}: OK")
    if not failed:
        try:  # names and options must also agree across the files
            specs = api.load_specs(args.paths)
        except api.SpecError as e:
            print(e.message, file=sys.stderr)
            failed = True
        else:
            for p in specs.properties:
                if p.share is not None:
                    print(f"{p.where}: {p.name} must hold on at least {100 * p.share:g}% of prompts")
    return BAD_INPUT if failed else 0


def _cmd_signals(args) -> int:
    table = Table(title="signals for .stl properties (time = generation step; answer signals: gold answer token)")
    for col in ("name", "meaning", "formula", "axis"):
        table.add_column(col, overflow="fold")
    for row in api.describe_signals():
        table.add_row(*(escape(row[k]) for k in ("name", "meaning", "formula", "axis")))
    Console(width=max(Console().width, 160)).print(table)
    return 0


def _cmd_report(args) -> int:
    report = api.report(args.run_dir, compare=args.compare)
    h = report.headline
    print(f"toggle: wrote {report.markdown} and {report.html} ({len(report.plots)} plots: "
          f"{', '.join(p.name for p in report.plots.values())})")
    if h["size_reduction"] is not None:
        print(f"  size {format_reduction(h['size_reduction'])}, FLOPs {h['flops_reduction']:.2f}x fewer than 16-bit dense; "
              f"every property holds on calibration: {'yes' if h['satisfied'] else 'no'}"
              + (f"; held-out pass rate {100 * h['heldout_pass_rate']:.1f}%" if h["heldout_pass_rate"] is not None else ""))
    for p in report.operating_points:
        print(f"  operating point {p.name}: {p.path or p.note}")
    return 0


def _cmd_modules(args) -> int:
    loaded = api.load_model(args.model, device=args.device or "cpu", trust_remote_code=args.trust_remote_code)
    rows = api.describe_modules(loaded.model)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"{loaded.model_id}: {len(rows)} compressible modules")
    for col in ("name", "block", "component", "part", "shape", "params", "layout"):
        table.add_column(col, justify="right" if col in ("block", "params") else "left")
    for r in rows:
        table.add_row(r["name"], "" if r["block"] is None else str(r["block"]), r["component"],
                      r["part"] + (" (tied head)" if r["tied"] else ""), "x".join(map(str, r["shape"])),
                      f"{r['params']:,}", r["layout"])
    Console().print(table)
    uncompressed = api.uncompressed_note(loaded.model)
    if uncompressed:
        print("note: " + uncompressed["note"])
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command (default: the process's arguments) and return its exit code. The signal
    handlers are put back as they were on return."""
    previous = _install_signal_handlers()
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run() -> None:
    """The `toggle` program: run the command, then leave at once (see the module docstring)."""
    _install_signal_handlers()
    sys.stdout = _ReaderMayLeave(sys.stdout)
    code = INTERRUPTED
    try:
        code = _main(sys.argv[1:])
    except SystemExit as e:  # argparse's --help (0) and usage errors (2), already printed
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else BAD_INPUT)
    except KeyboardInterrupt:  # a signal in the moment between the command's end and here
        print("toggle: interrupted", file=sys.stderr)
    except BaseException:  # a bug: say so, with the traceback, rather than leave with a silent 130
        code = INTERNAL_ERROR
        print("toggle: internal error (a bug in toggle; please report it with this traceback):", file=sys.stderr)
        traceback.print_exc()
    finally:
        _exit_now(code)


api = None  # toggle.api, imported by _main once the signal handlers are in place


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(_attach_dash_values(argv))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        _quiet_libraries()
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return BAD_INPUT
    try:
        global api
        if api is None:
            # Imported here, not at the top: torch and transformers take seconds to import, and
            # SIGTERM must already save and exit 130 while they load.
            from . import api as _api

            api = _api
            if not args.verbose:
                api.quiet_transformers()
        code = int(args.func(args) or 0)
        interrupts.check()  # a signal swallowed during the command's last stage still counts
        return code
    except ToggleError as e:
        print(f"toggle: error: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("toggle: interrupted", file=sys.stderr)
        return INTERRUPTED


def _install_signal_handlers() -> dict:
    """SIGTERM (a scheduler stopping the job, `kill PID`) saves and exits 130 like Ctrl-C does.
    Returns the handlers it replaced (empty when it could not install any)."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be installed from the main thread
    return interrupts.install()


class _ReaderMayLeave:
    """stdout for a reader that may stop reading (`toggle apply ... | head -2`): once the pipe is
    closed, what is printed goes nowhere and the command carries on (a search keeps its trials)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._gone()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._gone()

    def _gone(self) -> None:
        self._stream = open(os.devnull, "w")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _exit_now(code: int) -> None:
    """Flush what was printed and logged, then end the process without Python's shutdown. Every
    file toggle writes is complete by now (atomic writes, committed study), so nothing is lost."""
    def interrupted(_signum, _frame):
        os._exit(INTERRUPTED)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupted)
        signal.signal(signal.SIGINT, interrupted)
    try:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _attach_dash_values(argv: list[str]) -> list[str]:
    """`--budget -1GB` would read to argparse as a missing value followed by an option; hand
    the value over as `--budget=-1GB` so the budget parser can say what is wrong with it."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--budget" and i + 1 < len(argv) and argv[i + 1].startswith("-") and argv[i + 1] != "--":
            out.append(f"--budget={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def _quiet_libraries() -> None:
    """transformers and optuna are chatty; a user wants toggle's own progress only."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # GP fitting on a handful of trials warns about scaling and tiny variances; the sampler
    # handles both, and a user cannot act on them.
    warnings.filterwarnings("ignore", module=r"(botorch|gpytorch|linear_operator|optuna)(\.|$)")
    for name in ("transformers", "optuna", "accelerate", "gguf", "botorch", "linear_operator", "gpytorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":  # pragma: no cover
    run()
