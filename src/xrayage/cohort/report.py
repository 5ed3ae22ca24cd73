"""Write a :class:`CohortAnalysis`: ``summary.json``, PNGs and a self-contained ``report.html``."""

from __future__ import annotations

import base64
import html
import json
import math
import platform
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from .analysis import CohortAnalysis

PLOT_TITLES = {
    "scatter": "X-ray age against chronological age",
    "bland_altman": "Bland–Altman",
    "gap_forest": "Age gap by condition (adjusted)",
    "km": "Kaplan–Meier by age gap",
    "pace_spaghetti": "X-ray age over time (serial films)",
    "pace": "Pace of X-ray ageing",
}


def _clean(value: Any) -> Any:
    """JSON-ready: NaN/inf -> None, numpy scalars -> Python, tuples -> lists."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(table: Any) -> dict[str, Any]:
    return {str(k): dict(v) for k, v in table.to_dict(orient="index").items()}


def summary_dict(a: CohortAnalysis) -> dict[str, Any]:
    """Every number of the analysis as a JSON-ready dict."""
    out: dict[str, Any] = {
        "xrayage_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "settings": asdict(a.settings),
        "provenance": a.provenance.to_dict(),
        "counts": a.counts,
        "columns": a.columns,
        "accuracy": a.accuracy,
        "warnings": a.warnings,
    }
    g = a.gap_by_condition
    if g is not None:
        out["gap_by_condition"] = {
            "model": f"OLS: gap ~ {'all conditions' if g.joint else 'condition'} + "
                     f"{' + '.join(g.adjusted_for_)}",
            "inference": ("CR2 (Bell-McCaffrey) errors clustered on "
                          f"{g.cluster_col}" if g.cluster_col else "HC2 errors")
                         + ", Satterthwaite degrees of freedom",
            "joint": g.joint, "min_group": g.min_group, "untested": g.untested_,
            "reference": g.reference_, "correction": g.correction, "alpha": g.alpha,
            "cluster": g.cluster_col, "conditions": _records(g.summary),
            "logistic": {
                "model": f"logit P(condition) ~ gap + {' + '.join(g.adjusted_for_)}",
                "conditions": _records(g.logistic_)},
            "subgroups": (None if g.subgroups_ is None
                          else g.subgroups_.to_dict(orient="records")),
        }
    c = a.prognosis
    if c is not None:
        out["prognosis"] = {
            "n": c.n_, "n_events": c.n_events_, "n_dropped": c.n_dropped_,
            "hazard_ratio_per_year": c.hazard_ratio_,
            "hazard_ratio_ci": [c.hazard_ratio_lower_, c.hazard_ratio_upper_],
            "p": c.p_value_, "n_rows": c.n_rows_, "films": c.film_choice_
            + (", all films with robust errors" if c.robust_ else ""),
            "strata": c.strata_ and list(a.settings.strata), "interaction": c.interaction_,
            "c_index_cv": c.c_index_cv_,
            "cox": _records(c.summary.rename(
                columns=lambda x: x.replace(f" {1 - c.alpha:.0%}", ""))),
            "ph_test": _records(c.ph_test_), "c_index": c.c_index_,
            "c_index_gain": c.c_index_gain_, "c_index_gain_ci": list(c.c_index_gain_ci_),
            "km_groups": c.km_groups, "logrank_p": c.logrank_p_,
            "at_risk": {str(k): v for k, v in c.at_risk_.to_dict(orient="index").items()},
        }
    f = a.pace
    if f is not None:
        out["pace"] = {
            "model": "MixedLM (REML): xray_age ~ t + age at first film + sex [+ c + c:t], "
                     "random intercept and slope of t per patient; t = years since first film",
            "pace": f.pace_, "pace_ci": [f.pace_lower_, f.pace_upper_], "p_vs_0": f.pace_p_,
            "n_films": f.n_films_, "n_patients": f.n_patients_, "n_serial": f.n_serial_,
            "follow_up": f.follow_up_, "random": f.random_,
            "conditions": _records(f.conditions_),
        }
    return _clean(out)


def write_report(a: CohortAnalysis, out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.json``, one PNG per figure and ``report.html`` into `out_dir`.

    Returns
    -------
    dict
        Output name -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    images: dict[str, str] = {}
    for name, ax in a.figures.items():
        path = out / f"{name}.png"
        ax.figure.savefig(path, dpi=120)
        paths[name] = path
        images[name] = base64.b64encode(path.read_bytes()).decode("ascii")
    summary = summary_dict(a)
    paths["summary"] = out / "summary.json"
    paths["summary"].write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n",
                                encoding="utf-8")
    paths["report"] = out / "report.html"
    paths["report"].write_text(render_html(a, summary, images), encoding="utf-8")
    return paths


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(rows: list[list[Any]], header: list[str], digits: int = 2) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c, digits)}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(images: dict[str, str], name: str) -> str:
    if name not in images:
        return ""
    return (f'<figure><img alt="{PLOT_TITLES.get(name, name)}" '
            f'src="data:image/png;base64,{images[name]}"></figure>')


def _gap_extras(g: dict[str, Any]) -> str:
    """The logistic (paper's) model and the subgroup table of the gap section."""
    out = f"<p>Inference: {html.escape(g['inference'])}.</p>"
    if g["untested"]:
        out += ("<p>Reported but not tested (fewer than "
                f"{g['min_group']} per group): {html.escape(', '.join(g['untested']))}.</p>")
    rows = [[k, v["odds_ratio_per_year"], f"{_fmt(v['or_lower'], 3)}–{_fmt(v['or_upper'], 3)}",
             v["p"]] for k, v in g["logistic"]["conditions"].items()]
    if rows:
        out += (f"<h3>Odds of each condition per year of gap</h3><p>"
                f"{html.escape(g['logistic']['model'])} (Ieki et al. 2022).</p>"
                + _table(rows, ["condition", "OR per year", "CI", "p"], digits=3))
    if g["subgroups"]:
        out += "<h3>Subgroups</h3>" + _table(
            [[r["condition"], f"{r['by']} = {r['level']}", r["n_with"],
              f"{_fmt(r['coef'])} ({_fmt(r['coef_lower'])}, {_fmt(r['coef_upper'])})",
              r["p"], r["p_interaction"]] for r in g["subgroups"]],
            ["condition", "subgroup", "units with", "adjusted difference (CI)", "p",
             "interaction p"])
    return out


def _interaction_html(inter: dict[str, Any] | None) -> str:
    if not inter:
        return ""
    rows = [[f"{inter['by']} = {lev[-1]}", inter[lev]["n"], inter[lev]["hr"],
             f"{_fmt(inter[lev]['lower'], 3)}–{_fmt(inter[lev]['upper'], 3)}"]
            for lev in ("level_0", "level_1")]
    return ("<h3>HR per year of gap by subgroup</h3>"
            + _table(rows, ["subgroup", "n", "HR", "CI"], digits=3)
            + f"<p>Interaction p={_fmt(inter['p_interaction'])}.</p>")


def render_html(a: CohortAnalysis, summary: dict[str, Any], images: dict[str, str]) -> str:
    """The report as one HTML page with the plots embedded (no external files)."""
    prov = summary["provenance"]
    parts = [f"<h1>X-ray age cohort analysis</h1><p>xrayage {__version__}, "
             f"{summary['created']}. {a.counts.get('n_analysed', 0)} images analysed of "
             f"{a.counts['n_predictions']} predictions; gap: {a.columns['gap']}.</p>"]
    status = html.escape(prov["status"])
    if prov["trusted"]:
        parts.append(f'<p class="ok">Predictions: <b>{status}</b> ({html.escape(prov["source"])}).'
                     "</p>")
    else:
        parts.append('<div class="danger"><b>Predictions may be in-sample.</b> '
                     f"Status: {status}. Results on images the model trained on are biased. "
                     "Use <code>xrayage crossfit</code> or pass <code>--predictions-held-out"
                     "</code> for an external cohort.</div>")
    if a.warnings:
        parts.append("<h2>Warnings</h2><ul class='warn'>"
                     + "".join(f"<li>{html.escape(w)}</li>" for w in a.warnings) + "</ul>")
    if a.accuracy:
        acc = a.accuracy
        parts.append("<h2>1. Accuracy</h2>" + _table(
            [[k, acc[k]] for k in ("n", "mae", "rmse", "bias", "r", "r2", "icc",
                                   "mae_no_skill", "age_mean", "age_sd")], ["metric", "value"])
            + "<p>Years. mae_no_skill predicts the median age "
            f"{_fmt(acc.get('no_skill_median'))}.</p>"
            + _table([[grp, lev, m["n"], m["mae"], m["bias"], m["r"]]
                      for grp, levels in acc.get("by_group", {}).items()
                      for lev, m in levels.items()],
                     ["grouping", "level", "n", "MAE", "bias", "r"])
            + _img(images, "scatter") + _img(images, "bland_altman"))
    if a.gap_by_condition is not None:
        g = summary["gap_by_condition"]
        rows = [[name, r["n_with"], r["n_without"],
                 f"{_fmt(r['mean_with'])} ({_fmt(r['mean_with_lower'])}, "
                 f"{_fmt(r['mean_with_upper'])})",
                 f"{_fmt(r['mean_without'])} ({_fmt(r['mean_without_lower'])}, "
                 f"{_fmt(r['mean_without_upper'])})",
                 f"{_fmt(r['coef'])} ({_fmt(r['coef_lower'])}, {_fmt(r['coef_upper'])})",
                 r["p"], r["p_adjusted"]] for name, r in g["conditions"].items()]
        ref = f" against <code>{html.escape(g['reference'])}</code>" if g["reference"] else ""
        parts.append(
            f"<h2>2. Age gap by condition{ref}</h2><p>{html.escape(g['model'])}; "
            f"{1 - g['alpha']:.0%} CIs; p adjusted by <b>{html.escape(g['correction'])}</b> "
            f"across {len(rows)} conditions"
            + (f"; errors clustered on {html.escape(g['cluster'])}" if g["cluster"] else "")
            + ".</p>" + _table(rows, ["condition", "n with", "n without", "mean gap with (CI)",
                                      "mean gap without (CI)", "adjusted difference (CI), y",
                                      "p", "p adjusted"])
            + _img(images, "gap_forest") + _gap_extras(g))
    if a.prognosis is not None:
        p = summary["prognosis"]
        ci = p["c_index"]
        parts.append(
            f"<h2>3. Prognosis</h2><p>{p['n']} patients ({html.escape(p['films'])}; "
            f"{p['n_rows']} rows in the model), {p['n_events']} events. Cox model"
            + (f" stratified on {html.escape(', '.join(p['strata']))}" if p["strata"] else "")
            + ", "
            f"<b>HR per year of gap {p['hazard_ratio_per_year']:.3f} "
            f"({p['hazard_ratio_ci'][0]:.3f}–{p['hazard_ratio_ci'][1]:.3f}), "
            f"p={_fmt(p['p'])}</b>, adjusted for the other covariates below.</p>"
            + _table([[k, v["exp(coef)"], v["exp(coef) lower"],
                       v["exp(coef) upper"], v["p"]] for k, v in p["cox"].items()],
                     ["covariate", "HR", "lower", "upper", "p"], digits=3)
            + "<h3>Proportional hazards (Schoenfeld residuals, rank time)</h3>"
            + _table([[k, v["test_statistic"], v["p"]] for k, v in p["ph_test"].items()],
                     ["covariate", "statistic", "p"])
            + "<h3>Discrimination (C-index)</h3>"
            + _table([[k, v, (p["c_index_cv"] or {}).get(k)] for k, v in ci.items()],
                     ["model", "apparent", "cross-validated"], digits=3)
            + "<p>adjusted = age + sex + covariates. Cross-validated: pooled out-of-fold "
            "linear predictors of patient folds.</p>"
            + f"<p>Gain of age + gap over age{' (cross-validated)' if p['c_index_cv'] else ''}"
            f": {_fmt(p['c_index_gain'], 3)} (patient-bootstrap CI "
            f"{_fmt(p['c_index_gain_ci'][0], 3)} to {_fmt(p['c_index_gain_ci'][1], 3)}).</p>"
            + _interaction_html(p["interaction"])
            + f"<h3>Kaplan–Meier ({html.escape(p['km_groups'])})</h3>"
            f"<p>Log-rank p={_fmt(p['logrank_p'])}.</p>" + _img(images, "km"))
    if a.pace is not None:
        q = summary["pace"]
        parts.append(
            f"<h2>4. Pace of X-ray ageing</h2><p>{q['n_serial']} of {q['n_patients']} patients "
            f"with two or more films ({q['n_films']} films; median span "
            f"{_fmt(q['follow_up']['median_years'])} y). {html.escape(q['model'])}.</p>"
            f"<p><b>Pace {_fmt(q['pace'])} ({_fmt(q['pace_ci'][0])}–{_fmt(q['pace_ci'][1])}) "
            "X-ray years per calendar year</b> (1.0 = ageing as the calendar does; a model "
            "that regresses to the mean reads below 1 even then). SD of patients' paces "
            f"{_fmt(q['random']['sd_pace'])}.</p>"
            + _table([[k, v["patients_with"], v["pace_without"], v["pace_with"],
                       f"{_fmt(v['difference'])} ({_fmt(v['lower'])}, {_fmt(v['upper'])})",
                       v["p"]] for k, v in q["conditions"].items()],
                     ["condition", "serial patients with", "pace without", "pace with",
                      "difference (CI)", "p"])
            + _img(images, "pace_spaghetti") + _img(images, "pace"))
    body = "\n".join(parts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>X-ray age cohort analysis</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5rem 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }}
th {{ background: #f3f3f3; }}
.danger {{ background: #fde2e2; border: 2px solid #c00; padding: 0.8rem; }}
.ok {{ color: #060; }} ul.warn li {{ color: #8a4b00; }}
img {{ max-width: 100%; }}
</style></head><body>
{body}
<p><small>Research software, not a medical device. Every number is in summary.json.</small></p>
</body></html>
"""
