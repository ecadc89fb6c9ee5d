"""Paired comparisons of systems (model · method) in a report: `clue-run report --compare REF`.

Runs pair on (split, seed) within a task: a system's run with seed s on FewCLUE split i against the
reference's run with the same seed on the same split. Both systems must have the same set of pairs on
a task, else the comparison is refused (one line naming both sets). A system compared with the reference
on two or more tasks gets one more row, "all tasks (k)": every pair of those tasks together, as a
benchmark's average over its tasks (each task's main metric). Statistics: report/stats.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..errors import ClueRunError
from ..registry import did_you_mean
from ..runs.predictions import load_predictions
from . import Group, Run
from .stats import Bootstrap, Paired, aso, holm, paired, paired_bootstrap

ALL = "all"
POOLED = "all tasks"


@dataclass
class Comparison:
    task: str
    metric: str
    system: str  # "model · method", as the report's rows
    reference: str
    keys: list[tuple]  # the (split, seed) pairs; (task, split, seed) in an all-tasks row
    result: Paired
    scores: list[tuple[float, float]]  # (system, reference) score of each pair of `keys` (all-tasks row: each unit)
    runs: list[tuple[str, str]]  # (system, reference) run of each pair: a multi-task run scores several tasks
    bootstrap: Optional[Bootstrap] = None
    bootstrap_note: str = ""  # why there is no example-level test


def label(group: Group) -> str:
    return f"{group.model} · {group.method}"


def pair_key(run: Run) -> tuple[str, int]:
    return (run.variant or "-", run.seed)


def _describe(keys) -> str:
    return ", ".join(f"split {v} seed {s}" if v != "-" else f"seed {s}" for v, s in sorted(keys)) or "none"


def _keyed(group: Group) -> dict[tuple, tuple[Run, float]]:
    keyed: dict[tuple, tuple[Run, float]] = {}
    for run, score in zip(group.runs, group.scores):
        key = pair_key(run)
        if key in keyed:
            raise ClueRunError(f"--compare: {group.task}: {label(group)} has two runs for {_describe([key])} "
                               f"({keyed[key][0].path.parent.name}, {run.path.parent.name}); keep the newest with --latest")
        keyed[key] = (run, score)
    return keyed


def resolve_reference(groups: list[Group], reference: str) -> list[str]:
    """The system labels REF names (a label, a method or a model); `all`: every system."""
    labels = sorted({label(g) for g in groups})
    if reference == ALL:
        return labels
    matches = sorted({label(g) for g in groups if reference in (label(g), g.method, g.model)})
    if not matches:
        methods = sorted({g.method for g in groups})
        raise ClueRunError(f"--compare {reference!r} names no system{did_you_mean(reference, methods + labels)} "
                           f"(methods: {', '.join(methods)})")
    if len(matches) > 1:
        raise ClueRunError(f"--compare {reference!r} names {len(matches)} systems ({'; '.join(matches)}); "
                           "give one as 'model · method'")
    return matches


def _bootstrap(task: str, metric: str, pairs: list[tuple[Run, Run]]) -> tuple[Optional[Bootstrap], str]:
    from ..metrics import compute_metrics

    data = []
    for run, ref in pairs:
        loaded = [load_predictions(r.path.parent) for r in (run, ref)]
        missing = [r for r, p in zip((run, ref), loaded) if p is None or p.step != r.best_step]
        if missing:
            return None, ("runs without per-example predictions matching best/ (predictions.npz: runs trained before "
                          "it was saved, or structured tasks), so the example-level test cannot be done")
        a, b = loaded
        if list(a.ids) != list(b.ids) or list(a.gold) != list(b.gold):
            return None, f"{run.path.parent} and {ref.path.parent} were scored on different examples"
        data.append((a.gold, a.pred, b.pred, a.num_labels))
    num_labels = data[0][3]

    def score(gold, pred) -> float:
        return compute_metrics([metric], gold, pred, num_labels)[metric]

    return paired_bootstrap([(g, a, b) for g, a, b, _ in data], score), ""


def _compare_pair(system: Group, ref: Group, with_aso: bool, no_examples: str) -> Comparison:
    a, b = _keyed(system), _keyed(ref)
    if set(a) != set(b):
        raise ClueRunError(f"--compare: {system.task}: {label(system)} has {_describe(a)} but {label(ref)} has "
                           f"{_describe(b)}; pairs need the same split × seed sets (filter with --task/--method/--latest)")
    keys = sorted(a)
    result = paired([a[k][1] for k in keys], [b[k][1] for k in keys])
    if with_aso:
        result.aso = aso([a[k][1] for k in keys], [b[k][1] for k in keys])
    comparison = Comparison(system.task, system.metric, label(system), label(ref), keys, result,
                            [(a[k][1], b[k][1]) for k in keys], [(str(a[k][0].path), str(b[k][0].path)) for k in keys])
    if no_examples:
        comparison.bootstrap_note = no_examples
    else:
        comparison.bootstrap, comparison.bootstrap_note = _bootstrap(system.task, system.metric,
                                                                     [(a[k][0], b[k][0]) for k in keys])
    return comparison


def _check_tasks(groups: list[Group], refs: list[str], reference: str) -> None:
    """Every compared system must have the reference's tasks, and no others (else: one line, both sets)."""
    tasks: dict[str, set[str]] = {}
    for g in groups:
        tasks.setdefault(label(g), set()).add(g.task)
    for ref in refs:
        others = [o for o in tasks if o != ref] if reference != ALL else refs[refs.index(ref) + 1:]
        for other in others:
            if tasks[other] != tasks[ref]:
                raise ClueRunError(f"--compare: {other} has tasks {', '.join(sorted(tasks[other]))} but {ref} has "
                                   f"{', '.join(sorted(tasks[ref]))}; pairs need the same tasks (filter with --task)")


def compare(groups: list[Group], reference: str, with_aso: bool = False, no_examples: str = "") -> list[Comparison]:
    """Every system against the reference (or, with `all`, every pair once) on each task both have; Holm's
    correction across all of them. `no_examples`: why the example-level bootstrap does not apply (e.g. the
    scores are not of the split the predictions were saved on)."""
    refs = resolve_reference(groups, reference)
    by_task: dict[str, dict[str, Group]] = {}
    for g in groups:
        by_task.setdefault(g.task, {})[label(g)] = g
    _check_tasks(groups, refs, reference)
    comparisons = []
    for task, systems in by_task.items():
        for i, ref in enumerate(refs):
            if ref not in systems:
                continue
            others = refs[i + 1:] if reference == ALL else sorted(systems)
            comparisons += [_compare_pair(systems[o], systems[ref], with_aso, no_examples) for o in others if o in systems and o != ref]
    if not comparisons:
        raise ClueRunError(f"--compare {reference!r}: no task has both the reference and another system")
    comparisons += pooled(comparisons, with_aso)
    holm([c.result for c in comparisons])
    return comparisons


def pooled(comparisons: list[Comparison], with_aso: bool = False) -> list[Comparison]:
    """Per system × reference compared on two or more tasks, one comparison over all their pairs (task,
    split, seed): Δ is the mean of every task's main-metric differences, as a benchmark averages its tasks.
    Pairs that share a run (a multi-task run scores all its tasks) are not independent: they are averaged
    into one unit first, and n counts units."""
    by_systems: dict[tuple[str, str], list[Comparison]] = {}
    for c in comparisons:
        by_systems.setdefault((c.system, c.reference), []).append(c)
    rows = []
    for (system, reference), group in by_systems.items():
        if len(group) < 2:
            continue
        units = independent_units([r for c in group for r in c.runs])
        pairs = [s for c in group for s in c.scores]
        a = [sum(pairs[i][0] for i in unit) / len(unit) for unit in units]
        b = [sum(pairs[i][1] for i in unit) / len(unit) for unit in units]
        result = paired(a, b)
        if with_aso:
            result.aso = aso(a, b)
        rows.append(Comparison(f"{POOLED} ({len(group)})", "main metric", system, reference,
                               [(c.task, *k) for c in group for k in c.keys], result, list(zip(a, b)),
                               [r for c in group for r in c.runs],
                               bootstrap_note="an all-tasks row pools runs of different tasks and metrics"))
    return rows


def independent_units(runs: list[tuple[str, str]]) -> list[list[int]]:
    """Indices of pairs grouped so that no two groups share a run (connected components over shared runs)."""
    parent = list(range(len(runs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, pair in enumerate(runs):
        for path in pair:
            if path in first:
                parent[root(i)] = root(first[path])
            else:
                first[path] = i
    units: dict[int, list[int]] = {}
    for i in range(len(runs)):
        units.setdefault(root(i), []).append(i)
    return list(units.values())


# -- output ----------------------------------------------------------------------------------

HEADER = ["task", "system", "reference", "n", "Δ", "95% CI", "p sign-flip", "p t", "p Holm", "sig",
          "Δ examples [95% CI]", "ASO ε"]


def _p(value: Optional[float]) -> str:
    return "" if value is None else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _interval(interval) -> str:
    return "" if interval is None else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


def values(c: Comparison) -> list[str]:
    """One comparison's cells under HEADER."""
    r, b = c.result, c.bootstrap
    boot = "" if b is None else f"{b.mean:+.2f} {_interval(b.interval)}" + (" †" if b.significant else "")
    return [c.task, c.system, c.reference, str(r.n), f"{r.mean:+.2f}", _interval(r.interval), _p(r.perm_p) + ("" if r.exact else " (MC)"),
            _p(r.t_p), _p(r.holm_p), "*" if r.significant else "", boot, "" if r.aso is None else f"{r.aso:.2f}"]


def footnote(comparisons: list[Comparison], aso_asked: bool = False, aso_available: bool = True) -> list[str]:
    """Every choice behind the comparison table, and what could not be done."""
    from .stats import BOOTSTRAP_RESAMPLES, EXACT_MAX, RESAMPLES

    smallest = min(c.result.n for c in comparisons)
    lines = [
        f"Comparisons ({len(comparisons)}): Δ = system − reference, score ×100, mean over n pairs of runs with the same "
        "task, split and seed; 95% CI: Student t interval of the paired differences (scipy.stats.t.interval).",
        f"p sign-flip: paired permutation test of the mean difference (scipy.stats.permutation_test, "
        f"permutation_type='samples', two-sided), exact over all 2^n sign flips for n ≤ {EXACT_MAX}, else "
        f"{RESAMPLES:,} random flips with seed 0 (MC). p t: paired t-test (scipy.stats.ttest_rel), shown beside it.",
        *([f"{POOLED} (k): the pairs of all k tasks a system shares with its reference, each task's main metric, "
           "so Δ is the difference of the k-task average score (as FewCLUE averages its tasks); pairs that share a "
           "run (a multi-task run scores all its tasks) are averaged into one unit first and n counts units; one more "
           "comparison in Holm's family."] if any(c.task.startswith(POOLED) for c in comparisons) else []),
        "p Holm: Holm's step-down correction of the sign-flip p over every comparison shown (statsmodels "
        "multipletests, method='holm'); * marks p Holm < 0.05.",
        f"Δ examples: paired bootstrap over examples (scipy.stats.bootstrap, {BOOTSTRAP_RESAMPLES} resamples, "
        "percentile interval, seed 0): each paired run's dev examples resampled with the same indices for both "
        "systems, statistic = mean over pairs of the metric difference; † marks an interval without 0 (not corrected "
        "for multiplicity). It needs the per-example predictions runs save in predictions.npz.",
    ]
    if smallest <= 5:
        lines.append(f"With n ≤ 5 pairs (smallest here: {smallest}) the sign-flip test cannot reach p < 0.05 "
                     f"(its smallest p is 2/2^n = {2 / 2 ** smallest:.3f} at n={smallest}): such rows cannot be told apart.")
    missing = [c.bootstrap_note for c in comparisons if c.bootstrap is None and c.bootstrap_note]
    lines += [f"No example-level test for {missing.count(note)} of {len(comparisons)} comparisons: {note}."
              for note in dict.fromkeys(missing)]
    if aso_asked:
        lines.append("ASO ε: deepsig.aso ε_min of the system's scores over the reference's (almost stochastic order; "
                     "200 bootstrap iterations, seed 0; < 0.5: the system tends to score higher, near 0: clearly)."
                     if aso_available else "ASO ε: deepsig is not installed (pip install deepsig); column left empty.")
    return lines


def to_markdown_table(comparisons: list[Comparison]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|---|---|---" + "|---:" * (len(HEADER) - 3) + "|"]
    return lines + ["| " + " | ".join(values(c)) + " |" for c in comparisons]


def to_dicts(comparisons: list[Comparison]) -> list[dict]:
    out = []
    for c in comparisons:
        r, b = c.result, c.bootstrap
        out.append({"task": c.task, "metric": c.metric, "system": c.system, "reference": c.reference,
                    "pairs": [dict(zip(("task", "split", "seed")[-len(k):], k)) for k in c.keys], "n": r.n,
                    "mean_difference": r.mean,
                    "ci95": list(r.interval) if r.interval else None, "p_sign_flip": r.perm_p, "exact": r.exact,
                    "p_t": r.t_p, "p_holm": r.holm_p, "significant": r.significant, "aso_epsilon": r.aso,
                    "bootstrap": None if b is None else {"mean_difference": b.mean, "ci95": list(b.interval),
                                                         "pairs": b.pairs, "examples": b.examples,
                                                         "excludes_zero": b.significant},
                    "bootstrap_note": c.bootstrap_note or None})
    return out
