"""The pipeline in one place: search, apply, audit, report. The CLI is a thin layer over these.

    import toggle.api as toggle
    result = toggle.search("smollm2-135m", "100MB", trials=12)       # plan.yaml, summary.json, report
    info = toggle.apply(result.run_dir / "plan.yaml", "smollm2-135m", "out/model")
    audit = toggle.audit("out/model")                                  # held-out prompts
    toggle.report(result.run_dir)

Each function checks everything a user can get wrong before any model work, then calls the
stages in order: load (toggle.load), prompts, trace, specs, compress (the applier and its
statistics), evaluate, cost, search, formats, audit, report.
"""
from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from pathlib import Path

import torch

from . import interrupts, llama_cpp
from .audit import MODES, AuditResult, audit_models, check_engine, check_split, print_audit
from .compress.apply import PlanApplier, validate_plan
from .compress.calibrate import ActivationStats, collect_stats
from .confidence import DEFAULT_LEVEL, check_level
from .confidence import describe as describe_confidence
from .cost import CostModel
from .errors import InvalidInput, ToggleError
from .evaluate import Evaluator
from .files import check_output_place, finite_or_none, json_digest, robustness_to_json
from .formats import ArtifactInfo, get_format, read_manifest
from .hf import quiet_transformers
from .load import load_model, resolve
from .loaded import file_digest
from .modules import compressible_modules
from .modules import uncompressed_note as _uncompressed_note
from .modules import describe as describe_modules
from .plan import Plan
from .prompts import load_prompts
from .report import Report, write_report
from .rundir import ARTIFACT, CALIBRATION, HELDOUT, SPACE, STATS, RunDir
from .search.costs import CostTable
from .search.objective import ModelObjective
from .search.profile import load_profile
from .search.sensitivity import spread
from .search.space import SearchSpace
from .search.storage import check_storage_url
from .search.study import SearchResult, check_budget, run_study
from .signals import ANSWER, DEFAULT_STEPS, describe as describe_signals
from .specs import SpecError, load_specs, parse_overrides
from .specs import check_files as check_spec_files
from .trace import build_trace, encode_suite
from .trace.limits import context_note
from .trace.llama_cpp import LlamaCppScorer
from .units import Budget, format_bytes, format_reduction, parse_budget


# --- search --------------------------------------------------------------------------------------

def search(model: str, budget: str | Budget, *, specs=None, prompts=None, profile: str = "default",
           trials: int | None = None, objective: str = "size", relax: float = 0.0, overrides: dict | None = None,
           out: str | Path | None = None, storage: str | None = None, study: str | None = None,
           seed: int | None = None, sampler: str = "bo", device: str | None = None, trust_remote_code: bool = False,
           progress: bool = True, confidence: float = DEFAULT_LEVEL, write_model: bool = True) -> SearchResult:
    """Search for the smallest plan satisfying every property of MODEL within a budget, audit the
    winner on the held-out prompts (violation rates bounded at `confidence`) and write the run
    directory (plan, summary, trials, report, and with `write_model` the winner's compressed model
    in the profile's format under RUN/model, recorded in summary.json's `artifact`). The result's exit_code is 1 when no plan satisfies
    the specs or the winner fails the held-out audit."""
    # 1. Inputs a user can get wrong, before any model work.
    confidence = check_level(confidence)
    search_profile = load_profile(profile)
    if search_profile.needs_llama_cpp and not llama_cpp.available():  # else found out after the tracing
        raise llama_cpp.LlamaCppNotFound(f"--profile {profile}: quantizer {', '.join(search_profile.needs_llama_cpp)} "
                                         f"is llama.cpp's own, and llama.cpp is not installed; {llama_cpp.HOW}")
    budget = parse_budget(budget) if isinstance(budget, str) else budget
    if trials is not None and trials < 1:
        raise InvalidInput(f"--trials: {trials} is not valid; expected an integer >= 1")
    if seed is not None and seed < 0:
        raise InvalidInput(f"--seed: {seed} is not valid; expected an integer >= 0")
    check_storage_url(storage)
    spec_set = load_specs(list(specs) if specs else None, overrides or {}, relax)
    suite = load_prompts(prompts)
    run = RunDir(out or default_run_dir(model, budget))
    run.check_claimable()  # claimed (and a previous run's results removed) once the inputs are known good

    # 2. The model, its trace, calibration statistics, the evaluator and the cost model.
    say = _stage_printer(progress)
    say(f"loading {model}")
    loaded = load_model(model, device=device or "cpu", trust_remote_code=trust_remote_code)
    refs = compressible_modules(loaded.model)
    uncompressed = _uncompressed_note(loaded.model, refs)
    if uncompressed:
        say("note: " + uncompressed["note"])
    cost_model = CostModel.for_model(loaded, get_format(search_profile.format), refs)
    space = SearchSpace(loaded.model_id, refs, search_profile)
    costs = CostTable(space, cost_model.of)  # a knob value the format cannot store for these shapes: said now
    budget_bytes = cost_model.budget_bytes(budget)
    check_budget(budget_bytes, costs, cost_model.of, search_profile)  # before any tracing
    if objective == "flops" and not costs.flops_vary:
        raise InvalidInput(f"--objective flops: profile {profile!r} offers no pruning or low rank, so every plan has the "
                           f"same FLOPs per token; use --objective size, or a profile that prunes or factorises "
                           f"(--profile prune-lowrank)")
    past_context = context_note(loaded.model, encode_suite(suite, loaded.tokenizer),
                                spec_set.steps_needed or DEFAULT_STEPS, suite.source)
    if past_context:
        say("note: " + past_context)
    say(f"tracing the base model on {len(suite.split('calibration'))} calibration prompts")
    trace = build_trace(loaded, suite, spec_set, split="calibration")
    run.claim()
    stats, meta = calibration_stats(loaded, refs, trace, search_profile.needs_stats, run)
    meta = {**meta, "fingerprint": loaded.fingerprint}  # the plan applies to these weights wherever they are
    applier = PlanApplier(loaded.model, refs, stats)
    evaluator = Evaluator(loaded, spec_set, trace, applier)
    base_failing = base_failures(spec_set, evaluator)
    if base_failing:
        say("note: " + base_failing["note"])
    names = [p.name for p in spec_set.properties]
    identity = study_identity(loaded, trace, spec_set, suite, search_profile)
    # the profiling caches (sensitivity.json, measured.json) are keyed by this: other specs or
    # constants measure other margins
    key = f"{loaded.fingerprint}|{trace.key}|{','.join(names)}|specs={identity['spec_files']}:{identity['consts']}"
    full = ModelObjective(loaded.model_id, refs, names, evaluator, cost_model, cache_key=key,
                          loaded_bytes=loaded.source_bytes, loaded_format=loaded.source_quantization)
    ids = trace.prompt_ids
    subset = spread(ids, search_profile.sensitivity.prompts)
    profiling = full if len(subset) == len(ids) else ModelObjective(
        loaded.model_id, refs, names, evaluator, cost_model, cache_key=f"{key}|{','.join(subset)}", prompts=subset,
        replay=True)
    confirm, confirmation = None, suite.split("confirmation")
    if len(confirmation):
        # the search fits the calibration prompts; a new best must also hold on these (never the held-out ones)
        say(f"tracing the base model on {len(confirmation)} confirmation prompts")
        applier.restore()
        confirm = ModelObjective(loaded.model_id, refs, names,
                                 Evaluator(loaded, spec_set, build_trace(loaded, suite, spec_set, split="confirmation"),
                                           applier), cost_model, cache_key=f"{key}|confirmation")

    # 3. The study; then the winner's held-out audit goes into summary.json; then the report.
    def finish(summary: dict, plan: Plan | None) -> None:
        summary["specs"] = {"files": list(spec_set.files), "relax": relax, "overrides": dict(overrides or {}),
                            "consts": spec_set.const_values}
        run.write_json(SPACE, space.to_dict())
        if uncompressed:
            summary["uncompressed"] = uncompressed
        if base_failing:
            summary["base_failures"] = base_failing
        if plan is None:
            summary["heldout"] = {"skipped": "no plan satisfies every property within the budget"}
            return
        say(f"held-out audit of trial {plan.meta.get('trial')}")
        calibration = evaluator.evaluate(plan, reuse=True)  # scored as a trial in this process: no pass again
        applier.restore()
        applier.release_caches(keep=plan)  # other plans' weights: up to 2 GiB the audit needs for itself
        run.write_json(CALIBRATION, {
            "trial": plan.meta.get("trial"), "split": "calibration",
            "robustness": {k: robustness_to_json(v) for k, v in calibration.robustness.items()},
            "per_prompt": calibration.per_prompt})
        summary["heldout"] = heldout_check(plan, loaded, spec_set, suite, applier, run, confidence=confidence)
        if write_model:
            say("writing the compressed model")
            info = write_artifact(loaded, plan, run.path / ARTIFACT, search_profile.format, applier=applier)
            # relative to the run directory, like every other file it names
            summary["artifact"] = {"path": os.path.relpath(info.path, run.path), "format": info.fmt,
                                   "weights_file_bytes": info.weights_file_bytes, "total_bytes": info.total_bytes,
                                   "accounted_bytes": info.cost.bytes, "tensor_bytes_on_disk": info.tensor_bytes_on_disk,
                                   "accounted_tensor_bytes": info.cost.tensor_bytes, **info.meta}
            if info.fmt == "gguf":
                say("measuring the file's speed in llama.cpp (llama-bench)")
                summary["artifact"]["speed"] = gguf_speed(info.path, loaded.source_path)

    result = run_study(full, budget_bytes, profile=search_profile, run_dir=run.path, trials=trials, sampler=sampler,
                       objective_kind=objective, seed=seed, storage=storage, study_name=study,
                       profiling_objective=profiling, progress=progress, plan_meta=meta, finish=finish,
                       identity=identity, confirm=confirm, costs=costs)
    say("writing the report")
    write_report(run.path)
    return result


def gguf_speed(gguf: Path, source: Path | None = None, threads: int | None = None) -> dict:
    """llama-bench's tokens/s of a written .gguf file on this machine (torch's thread count), and of
    the GGUF file the model was loaded from, for comparison: llama.cpp's types differ in speed as
    well as size (Q4_1 runs at about half Q4_0's speed on a CPU). Without llama.cpp: why not."""
    threads = threads or torch.get_num_threads()
    if not llama_cpp.available():
        return {"skipped": "llama.cpp is not installed (tools/build_llama_cpp.sh)"}
    try:
        speed = {**llama_cpp.bench(gguf, threads), "measured_on": "this machine, under its current load"}
        if source is not None and Path(source).suffix == ".gguf":
            speed["source"] = {"file": Path(source).name, **llama_cpp.bench(source, threads)}
    except ToggleError as e:  # the file is written and audited; a failed benchmark says so
        return {"skipped": e.message}
    return speed


def study_identity(loaded, trace, spec_set, suite, profile) -> dict:
    """A short hash per input a trial's result depends on: the model's weights, the trace (its
    settings and calibration prompts), the spec files' contents, their constants after --set /
    --relax, the whole prompt suite (the held-out audit uses it), the profile and its methods
    (toggle.search.study keeps it in the study: other inputs, another study). The profile's
    trial count, seed and file location are left out: more trials resume, a seed picks plans."""
    files = [file_digest(Path(f)) for f in spec_set.files]
    consts = {Path(f).name: {n: c.value for n, c in cs.items()} for f, cs in spec_set.consts.items()}
    stable = dataclasses.replace(profile, trials=0, seed=0, source="", name="")
    return {"model": loaded.fingerprint, "trace": trace.key, "spec_files": json_digest(files),
            "consts": json_digest(consts), "prompts": suite.fingerprint, "profile": json_digest(repr(stable)),
            "methods": json_digest(repr(profile.methods))}


def uncompressed_note(model) -> dict | None:
    """The parameters of `model` no plan compresses, when they are a share a user must hear of
    (toggle.modules.uncompressed_note), else None."""
    return _uncompressed_note(model, compressible_modules(model))


def base_failures(specs, evaluator: Evaluator) -> dict | None:
    """The properties the base model fails against itself on the calibration prompts (its own
    outputs as the candidate's: jsd 0, cosines 1, ... exactly), with a note saying so; None when
    every one holds. A plan is compared with that model, so no plan that behaves like it can
    satisfy them: usually a threshold the original misses, or a signal of the base model alone."""
    robustness, per_prompt = evaluator.base_against_itself()
    failing = {}
    for prop in specs.properties:
        if robustness[prop.name] >= 0:
            continue
        values = per_prompt[prop.name]
        worst = min(values, key=values.get)
        failing[prop.name] = {"where": prop.where, "robustness": robustness[prop.name], "worst_prompt": worst,
                              "prompts_failing": sum(v < 0 for v in values.values()), "prompts": len(values)}
    if not failing:
        return None
    parts = [f"{name} ({f['where']}) on {f['prompts_failing']} of {f['prompts']} prompts (robustness "
             f"{f['robustness']:+.4g}; worst: prompt {f['worst_prompt']})" for name, f in failing.items()]
    return {"properties": failing, "note": (
        f"the base model itself fails {'; '.join(parts)}: a plan is checked against that model, so no plan that "
        f"behaves like it can satisfy {'this' if len(failing) == 1 else 'these'}; loosen the threshold "
        f"(--set NAME=VALUE, --relax) or check the property")}


def _stage_printer(enabled: bool):
    """One line on stderr as each stage of a long run starts (the progress bar covers the trials)."""
    def say(text: str) -> None:
        interrupts.check()
        if enabled:
            print(f"toggle: {text}", file=sys.stderr, flush=True)
    return say


def default_run_dir(model: str, budget: Budget) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name or model)
    return Path("runs") / f"{name}-{re.sub(r'[^A-Za-z0-9.]+', '', str(budget))}"


def calibration_stats(loaded, refs, trace, needed: bool, run: RunDir) -> tuple[ActivationStats | None, dict]:
    """Input statistics for activation-aware methods (Wanda, AWQ, GPTQ, ASVD, llama.cpp's importance
    matrix), when `needed`, gathered over the calibration trace's token paths, kept beside the plan
    so `toggle apply` reproduces it."""
    if not needed:
        return None, {}
    sequences = [torch.tensor(list(p.prompt_ids) + list(p.tokens)) for p in trace.paths]
    stats = collect_stats(loaded.model, sequences, refs=refs, fingerprint=loaded.fingerprint)
    run.mkdir()
    stats.save(run / STATS)
    return stats, {"calibration_stats": STATS}


def heldout_check(plan: Plan, loaded, specs, suite, applier: PlanApplier, run: RunDir, *,
                  confidence: float = DEFAULT_LEVEL) -> dict:
    """The held-out audit of `plan` (teacher mode, in process, the simulated weights the artifact
    decodes to): written as heldout.json; summary.json's `heldout` block is returned, with the
    violation rate of every property and of all together and its upper bound at `confidence`."""
    unanswered = [p.name for p in specs.properties if p.axis == ANSWER] \
        if not any(p.answer for p in suite.split("heldout")) else []
    if unanswered and len(unanswered) < len(specs.properties):
        # gold-answer properties without held-out answers: the others are still checked there
        specs = dataclasses.replace(specs, properties=[p for p in specs.properties if p.name not in unanswered])
    try:
        check_split(suite, "heldout", specs)
    except InvalidInput as e:  # the search itself was fine: say why there is no held-out check
        return {"skipped": e.message}
    result = audit_models(loaded, loaded, specs, suite, split="heldout", mode="teacher", applier=applier, plan=plan,
                          artifact=f"{run / 'plan.yaml'} (simulated)", confidence=confidence)
    run.write_json(HELDOUT, result.to_dict())
    return {"pass_rate": result.pass_rate, "satisfied": result.satisfied, "prompts": len(result.prompts),
            "mode": result.mode, "robustness": {k: finite_or_none(v) for k, v in result.robustness.items()},
            "share": {k: p.share for k, p in result.properties.items()}, "reason": result.reason,
            "confidence": result.overall.to_dict(),
            "properties": {k: p.bound.to_dict() for k, p in result.properties.items()},
            **({"unchecked": {name: "no held-out prompt has a gold answer" for name in unanswered}}
               if unanswered else {})}


def final_lines(result: SearchResult) -> list[str]:
    """What the CLI prints last: the verdict, size and FLOP reduction against the 16-bit dense model."""
    s = result.summary
    lines = []
    if s.get("satisfied"):
        over = " over the calibration and confirmation prompts" if s.get("best_confirmed") else ""
        plans = s.get("feasible_plans", s["feasible_trials"])
        distinct = f" ({plans} distinct plan{'s' if plans != 1 else ''})" if plans != s["feasible_trials"] else ""
        lines.append(f"best plan: trial {s['best_trial']}, every property holds (minimum margin {s['min_margin']:+.4f}{over}); "
                     f"{s['feasible_trials']} of {s['trials']} trials{distinct} satisfied the specs within "
                     f"{format_bytes(s['budget_bytes'])}")
    else:
        # a missing margin is -inf: some property could not be scored (no step in its window) on a prompt
        margin = f"{s['min_margin']:+.4f}" if s.get("min_margin") is not None else "-inf"
        closest = (f"closest plan: trial {s['best_trial']}, minimum margin {margin}" if s.get("best_trial") is not None
                   else f"no plan within the budget was evaluated{': ' + s['stopped'] if s.get('stopped') else ''}")
        lines.append(f"no plan satisfies every property within {format_bytes(s['budget_bytes'])} after {s['trials']} trials; {closest}")
    start = {"allocator path": "a point of the measured-error allocator's path, which BO bisects first",
             "uniform": "a uniform setting, which BO bisects after the measured-error allocator's path"}
    # only BO bisects before it proposes: a baseline sampler's winner needs no such line
    if s.get("satisfied") and s.get("winner_strategy") in start and s.get("sampler", "bo") == "bo":
        gp = (s.get("trials_by_strategy") or {}).get("bo", {"trials": 0, "feasible": 0})
        after = (f"its {gp['trials']} model-guided proposals after that found no smaller satisfying plan" if gp["trials"]
                 else f"the bisections took all {s['trials']} trials, none was left for a model-guided proposal "
                      f"(more --trials leave some)")
        lines.append(f"the winner is {start[s['winner_strategy']]}; {after}")
    if s.get("confirmation_prompts") and s.get("confirmations"):
        rejected = s.get("confirmation_rejections", 0)
        lost = "lost their lead there" if s.get("objective") == "margin" else "held on the calibration prompts only"
        verdict = f"{rejected} {lost} and were not kept" if rejected else "every one held there"
        lines.append(f"confirmation: {s.get('confirmations', 0)} would-be best plans were also scored on the "
                     f"{s['confirmation_prompts']} confirmation prompts; {verdict}")
    if s.get("compressed_size_bytes") is not None:
        lines.append(f"size: {format_bytes(s['compressed_size_bytes'])} vs {format_bytes(s['base_size_bytes'])} 16-bit dense "
                     f"({format_reduction(s['size_reduction'])})")
        lines.append(f"FLOPs per token: {s['compressed_flops_per_token']:.3g} vs {s['base_flops_per_token']:.3g} "
                     f"({s['flops_reduction']:.2f}x fewer)")
    if s.get("compressed_size_bytes") is not None and s.get("loaded_size_bytes"):
        fmt = f"{s['loaded_format']} GGUF " if s.get("loaded_format") else ""
        change = 1.0 - s["compressed_size_bytes"] / s["loaded_size_bytes"]
        lines.append(f"the loaded {fmt}weights file is {format_bytes(s['loaded_size_bytes'])}: the plan is "
                     f"{format_reduction(change)} than that")
    if s.get("uncompressed"):
        lines.append("note: " + s["uncompressed"]["note"])
    if s.get("base_failures"):
        lines.append("note: " + s["base_failures"]["note"])
    heldout = s.get("heldout") or {}
    if "pass_rate" in heldout:
        verdict = "every property holds" if heldout["satisfied"] else "VIOLATED"
        lines.append(f"held-out audit: {verdict} ({100 * heldout['pass_rate']:.1f}% of {heldout['prompts']} "
                     f"prompts satisfy every property)")
        if heldout.get("confidence"):
            lines.append(f"held-out, all properties: {describe_confidence(heldout['confidence'])}")
        if not heldout["satisfied"]:
            lines.append(f"the winner fails the held-out audit: {heldout_failures(heldout)}")
    elif heldout.get("skipped"):
        lines.append(f"held-out audit: skipped ({heldout['skipped']})")
    artifact = s.get("artifact")
    if artifact:
        lines.append(f"compressed model: {Path(result.run_dir) / artifact['path']} ({artifact['format']} format, weights file "
                     f"{format_bytes(artifact['weights_file_bytes'])}, {artifact['total_bytes']:,} bytes with "
                     f"config and tokenizer)")
        if (artifact.get("pre_tokenizer") or {}).get("note"):
            lines.append("note: " + artifact["pre_tokenizer"]["note"])
        speed = artifact.get("speed") or {}
        if "gen_tokens_per_s" in speed:
            line = (f"llama.cpp speed on this machine (llama-bench, {speed['threads']} threads): "
                    f"{speed['gen_tokens_per_s']:.0f} tokens/s generating, {speed['prompt_tokens_per_s']:.0f} reading a prompt")
            if "source" in speed:
                src = speed["source"]
                line += (f"; the loaded {src['file']}: {src['gen_tokens_per_s']:.0f} and "
                         f"{src['prompt_tokens_per_s']:.0f}")
            lines.append(line)
        elif speed.get("skipped"):
            lines.append(f"llama.cpp speed: not measured ({speed['skipped']})")
    lines.append(f"run directory: {result.run_dir}")
    return lines


def heldout_failures(heldout: dict) -> str:
    """Which properties a held-out block says failed, and on how many prompts."""
    if heldout.get("reason"):
        return f"the plan cannot be scored ({heldout['reason']})"
    broken = [f"{name} on {c['violations']} of {c['prompts']} prompts"
              for name, c in (heldout.get("properties") or {}).items() if c["violations"]]
    return "; ".join(broken) or "a property is violated"


# --- apply ---------------------------------------------------------------------------------------

def apply(plan: str | Path | Plan, model: str, out: str | Path, *, format: str = "toggle", device: str | None = None,
          trust_remote_code: bool = False, loaded=None) -> ArtifactInfo:
    """Write the compressed model `plan` describes (a plan.yaml path or a Plan) for MODEL at `out`:
    the plan is checked against the model, its calibration statistics (recorded beside a plan
    file) are read, and the artifact is written in `format` ("toggle" or "gguf")."""
    plan_path = None
    if not isinstance(plan, Plan):
        plan_path = Path(plan)
        plan = Plan.load(plan_path)
    check_output_place(out, "--out")  # before the model is loaded and quantised
    loaded = loaded or load_model(model, device=device or "cpu", trust_remote_code=trust_remote_code)
    check_plan_model(plan, loaded, source=str(plan_path or "plan"))
    return write_artifact(loaded, plan, out, format, stats=plan_stats(plan, loaded, plan_path))


def write_artifact(loaded, plan: Plan, out: str | Path, fmt: str = "toggle", *, applier: PlanApplier | None = None,
                   stats: ActivationStats | None = None) -> ArtifactInfo:
    """Write `plan` applied to an already loaded model in `fmt` at `out` (the format's output path
    for it), priced by the cost model in that format. `applier` (with its caches and statistics)
    is reused when given, else one is built with `stats`."""
    fmt = get_format(fmt)
    applier = applier or PlanApplier(loaded.model, stats=stats)
    plan.validate_for(r.name for r in applier.refs)
    # the format first: a plan it cannot store needs no statistics; before pricing, as the cost
    # model would refuse it less helpfully
    fmt.check_plan(plan, applier.refs)
    validate_plan(plan, applier.refs, applier.stats)
    cost = CostModel.for_model(loaded, fmt, applier.refs).of(plan)
    path = fmt.output_path(out)
    try:
        return fmt.write(loaded, plan, path, applier, cost)
    except OSError as e:  # a full disk, a place the checks above could not foresee (/proc, ...)
        raise InvalidInput(f"--out {out}: cannot write {e.filename or path}: {e.strerror or e}") from None


def check_plan_model(plan: Plan, loaded, source: str = "plan") -> None:
    """The plan was made for this model: same id, or the same weights (meta.fingerprint)."""
    if plan.model == loaded.model_id or plan.meta.get("fingerprint") == loaded.fingerprint:
        return
    raise InvalidInput(f"{source}: model: the plan was made for {plan.model!r}, not for {loaded.model_id!r}; "
                       f"apply it to the model it was searched on")


def plan_stats(plan: Plan, loaded, plan_path: str | Path | None = None) -> ActivationStats | None:
    """The calibration statistics a plan's activation-aware methods were evaluated with:
    meta.calibration_stats, a statistics file (relative paths are relative to the plan file).
    None when the plan records none."""
    recorded = plan.meta.get("calibration_stats")
    if not recorded:
        return None
    # A plan names its statistics file beside itself (the search writes both to the run
    # directory); a plan file may come from someone else, so it cannot point anywhere else.
    source = plan_path if plan_path is not None else "plan"
    if not isinstance(recorded, str) or Path(recorded).name != recorded or recorded in (".", ".."):
        raise InvalidInput(f"{source}: meta.calibration_stats: {recorded!r} must be a file name in the plan's "
                           f"directory, e.g. calibration_stats.safetensors")
    folder = Path(plan_path).parent if plan_path is not None else Path(".")
    path = folder / recorded
    if not path.resolve().is_relative_to(folder.resolve()):
        raise InvalidInput(f"{source}: meta.calibration_stats: {recorded!r} points outside the plan's directory")
    stats = ActivationStats.load(path)
    if stats.fingerprint and stats.fingerprint != loaded.fingerprint:
        raise InvalidInput(f"{path}: calibration statistics of another model (fingerprint {stats.fingerprint}, "
                           f"this model is {loaded.fingerprint})")
    return stats


# --- audit ---------------------------------------------------------------------------------------

def audit(artifact, base: str | None = None, specs=None, prompts=None, split: str = "heldout",
          mode: str = "teacher", *, relax: float = 0.0, overrides: dict | None = None, device: str | None = None,
          trust_remote_code: bool = False, worst: int = 5, confidence: float = DEFAULT_LEVEL,
          engine: str = "torch", threads: int | None = None) -> AuditResult:
    """Audit ARTIFACT (a toggle artifact directory, a .gguf file or a model directory) against
    its base model (default: the one recorded in the artifact's toggle.json) on a split of the
    prompt suite, with violation rates bounded at `confidence` (one-sided Clopper-Pearson).

    `engine="llama.cpp"` (a .gguf ARTIFACT, teacher mode): the compressed model's logits come
    from llama.cpp running the file (`threads` CPU threads), and the torch scores of the same
    file are reported beside them (`result.cross_check`). Signals of the model's internals
    (hidden_cos, attn_cos) are not exposed by llama.cpp: those come from torch on the same
    file, and a note says so.
    Everything a user can get wrong is checked before a model is loaded."""
    if mode not in MODES:
        raise InvalidInput(f"--mode: {mode!r} is not valid; expected teacher or free")
    check_engine(engine, mode)
    confidence = check_level(confidence)
    if isinstance(worst, bool) or not isinstance(worst, int) or worst < 0:
        raise InvalidInput(f"worst: {worst!r} is not valid; expected how many of the worst prompts to list (>= 0)")
    spec_set = load_specs(list(specs) if isinstance(specs, (list, tuple)) else specs, overrides or {}, relax)
    suite = load_prompts(prompts)
    check_split(suite, split, spec_set)
    artifact_path = Path(artifact).expanduser()
    if not artifact_path.exists():
        raise InvalidInput(f"{artifact}: no such artifact: expected a toggle artifact directory (toggle apply --out), "
                           f"a .gguf file or a model directory")
    scorer = None
    if engine == "llama.cpp":
        scorer = LlamaCppScorer(artifact_path, threads=threads)  # finds llama.cpp or says how to install it
    source, artifact_id, _ = resolve(str(artifact_path))
    manifest = read_manifest(Path(artifact_id)) if source == "toggle" else None
    if base is None:
        if manifest is None:
            kind = "a .gguf file" if source == "gguf" else "a model directory without toggle.json"
            raise InvalidInput(f"{artifact}: {kind} does not record its base model; pass --base MODEL "
                               f"(e.g. --base smollm2-135m)")
        base = manifest["base_model"]
    _, base_id, _ = resolve(base)

    start = time.perf_counter()
    base_loaded = load_model(base, device=device or "cpu", trust_remote_code=trust_remote_code)
    if base_id == artifact_id:
        candidate = base_loaded  # the same weights: audit the base model against itself
    else:
        candidate = load_model(artifact_id, device=device or "cpu", trust_remote_code=trust_remote_code)
    loaded_seconds = time.perf_counter() - start
    notes = []
    if manifest and manifest.get("base_fingerprint") and manifest["base_fingerprint"] != base_loaded.fingerprint:
        notes.append(f"the artifact was made from weights with fingerprint {manifest['base_fingerprint']}; "
                     f"the base model {base} has {base_loaded.fingerprint}")
    result = audit_models(candidate, base_loaded, spec_set, suite, split=split, mode=mode, worst=worst,
                          artifact=artifact_id, confidence=confidence, scorer=scorer, engine=engine)
    result.timings = {"load": round(loaded_seconds, 3), **result.timings}
    if scorer is not None:
        result.speed = llama_cpp.bench(artifact_path, scorer.threads)
    result.specs.update(relax=relax, overrides=dict(overrides or {}))
    result.notes[:0] = notes
    return result


# --- report --------------------------------------------------------------------------------------

def report(run_dir: str | Path, compare=()) -> Report:
    """Rebuild report.md, report.html, the plots and operating_points/ of a run directory from its
    files alone (no model is loaded)."""
    return write_report(run_dir, compare=compare)


__all__ = ["apply", "audit", "check_plan_model", "default_run_dir", "final_lines", "heldout_check", "plan_stats",
           "report", "search", "study_identity", "write_artifact",
           # what the command line uses besides the four stages
           "SpecError", "check_spec_files", "describe_modules", "describe_signals", "load_model", "load_specs",
           "parse_overrides", "print_audit", "quiet_transformers", "uncompressed_note"]
