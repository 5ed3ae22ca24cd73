"""``xrayage analyze PREDICTIONS``: accuracy, gap by condition and prognosis of a cohort."""

from __future__ import annotations

from pathlib import Path

import click

from ..cohort.analysis import AnalysisSettings, analyze_cohort
from ..cohort.report import write_report


@click.command()
@click.argument("predictions", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for report.html, summary.json and the PNG plots.")
@click.option("--clinical", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Clinical table (CSV/TSV) joined to the predictions.")
@click.option("--on", "on", help="Join column of --clinical (matched to a predictions column, "
              "else to the image path, file name or stem).")
@click.option("--condition", "conditions", multiple=True,
              help="Binary condition column (repeatable).")
@click.option("--expand-findings", help="Pipe-separated label column to expand into one 0/1 "
              "column per label (all become conditions unless --condition names some).")
@click.option("--reference", help="Compare each condition with this indicator only "
              "(e.g. no_finding after --expand-findings).")
@click.option("--time", "time_col", help="Follow-up time column (with --event).")
@click.option("--event", "event_col", help="Event column, 1 event / 0 censored (with --time).")
@click.option("--covariates", multiple=True, help="Adjustment column besides age and sex "
              "(repeatable; text columns are one-hot coded).")
@click.option("--gap", type=click.Choice(["auto", "raw", "corrected"]), default="auto",
              show_default=True, help="Age gap: corrected for regression to the mean, or raw.")
@click.option("--age", "age_col", help="Chronological age column (default age_years; the "
              "legacy name chronological_age is still read).")
@click.option("--sex", "sex_col", help="Sex column, M/F or 1/0 (default sex or sex_male).")
@click.option("--cluster", help="Patient ID column: CR2 cluster-robust errors (Satterthwaite df) "
              "across a patient's images, and patient-level survival.")
@click.option("--joint", is_flag=True, help="Fit all conditions in one gap model (each "
              "adjusted for the others) instead of one model per condition.")
@click.option("--by", "by", help="Binary column (e.g. sex): effect in each subgroup and the "
              "interaction test, for the gap models and the Cox HR.")
@click.option("--strata", multiple=True, help="Stratify the Cox baseline hazard on this column "
              "(repeatable).")
@click.option("--films", type=click.Choice(["first", "all"]), default="first",
              show_default=True, help="Survival with --cluster: each patient's first film, or "
              "all films with robust errors.")
@click.option("--film-order", help="Column ordering a patient's films (a date or number; "
              "default study_date, acquisition_date, film_date, follow_up if present, else "
              "the file order).")
@click.option("--pace-time", help="Film date (or years) column: fit the pace of X-ray ageing "
              "on patients with serial films (needs --cluster).")
@click.option("--min-group", default=5, show_default=True, type=click.IntRange(2, None),
              help="Conditions with fewer patients (with --cluster; else images) with or "
              "without them are reported but not tested.")
@click.option("--cv-folds", default=5, show_default=True, type=click.IntRange(0, 50),
              help="Folds of the cross-validated C-index (0: apparent only).")
@click.option("--correction", type=click.Choice(["holm", "bh", "none"]), default="holm",
              show_default=True, help="Multiple-testing correction across conditions.")
@click.option("--km-groups", type=click.Choice(["tertiles", "sign"]), default="tertiles",
              show_default=True, help="Kaplan–Meier groups: gap tertiles or gap > 0 vs ≤ 0.")
@click.option("--bootstrap", "n_bootstrap", default=200, show_default=True,
              type=click.IntRange(0, 10000), help="Resamples for the C-index gain CI.")
@click.option("--predictions-held-out", is_flag=True,
              help="State that no image was in the model's training set (external cohort).")
@click.option("--allow-in-sample", is_flag=True,
              help="Keep rows flagged in_sample (results are then marked biased).")
def analyze(predictions: Path, out_dir: Path, clinical: Path | None, on: str | None,
            conditions: tuple[str, ...], expand_findings: str | None, reference: str | None,
            time_col: str | None, event_col: str | None, covariates: tuple[str, ...], gap: str,
            age_col: str | None, sex_col: str | None, cluster: str | None, correction: str,
            km_groups: str, n_bootstrap: int, predictions_held_out: bool,
            allow_in_sample: bool, joint: bool, by: str | None, strata: tuple[str, ...],
            films: str, film_order: str | None, pace_time: str | None, min_group: int,
            cv_folds: int) -> None:
    """Analyse X-ray age in a cohort: accuracy, gap by condition, prognosis, pace of ageing.

    PREDICTIONS is `xrayage predict` or `xrayage crossfit` output (CSV or JSONL). Writes
    report.html (self-contained), summary.json (every number) and PNG plots into --out.
    Predictions not marked out-of-fold (the sidecar crossfit writes) or held out
    (--predictions-held-out) are flagged as possibly in-sample in both outputs.
    """
    settings = AnalysisSettings(
        conditions=list(conditions), expand_findings=expand_findings, reference=reference,
        time=time_col, event=event_col, covariates=list(covariates), gap=gap, age=age_col,
        sex=sex_col, cluster=cluster, correction=correction, km_groups=km_groups,
        n_bootstrap=n_bootstrap, predictions_held_out=predictions_held_out,
        allow_in_sample=allow_in_sample, joint=joint, by=by, strata=list(strata), films=films,
        film_order=film_order, pace_time=pace_time, min_group=min_group, cv_folds=cv_folds)
    result = analyze_cohort(predictions, settings, clinical=clinical, on=on)
    paths = write_report(result, out_dir)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"xrayage: analysed {result.counts.get('n_analysed', 0)} images; "
               f"report {paths['report']}", err=True)
