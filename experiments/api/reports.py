"""Reports resource (SPEC §3, §6): run the analysis now, latest report, history, export."""

from __future__ import annotations

from flask import Blueprint, Response

from experiments.api.routing import api_route
from experiments.db import db_session
from experiments.models import Report
from experiments.schemas import AnalyzeIn
from experiments.schemas.reports import (
    ExportOut,
    ExportQuery,
    FailedReportOut,
    ReportList,
    ReportListQuery,
    ReportOut,
)
from experiments.services import analysis

bp = Blueprint("reports", __name__, url_prefix="/api/v1")
TAGS = ("reports",)


def _out(report: Report) -> ReportOut | FailedReportOut:
    """A report, or the failure stored in its place (``{"experiment", "computed_at", "error"}``)."""
    data = analysis.report_to_dict(report)
    return (FailedReportOut if "error" in data else ReportOut).model_validate(data)


@api_route(bp, "/experiments/<key>/analyze", "POST", body=AnalyzeIn, optional_body=True,
           response=ReportOut, errors=(404, 409), tags=TAGS)
def analyze_experiment(key: str, body: AnalyzeIn) -> ReportOut | FailedReportOut:
    """Run the analysis now and return the new report (``error`` when it failed).

    An optional JSON body ``{"dimensions": ["browser"]}`` adds segment breakdowns for this
    run only (SPEC §11).
    """
    return _out(analysis.analyze_experiment(db_session(), key, dimensions=body.dimensions))


@api_route(bp, "/experiments/<key>/report", response=ReportOut, errors=(404,), tags=TAGS)
def latest_report(key: str) -> ReportOut | FailedReportOut:
    """The latest report (404 until the experiment has been analysed)."""
    return _out(analysis.get_latest_report(db_session(), key))


@api_route(bp, "/experiments/<key>/reports", query=ReportListQuery, response=ReportList,
           errors=(404,), tags=TAGS)
def list_reports(key: str, query: ReportListQuery) -> ReportList:
    """Report history, newest first."""
    rows, next_cursor = analysis.list_reports(db_session(), key, limit=query.limit,
                                              cursor=query.cursor)
    return ReportList(items=[_out(row) for row in rows], next_cursor=next_cursor)


@api_route(bp, "/experiments/<key>/export", query=ExportQuery, response=ExportOut,
           errors=(404,), tags=TAGS, alternate_media=("text/csv",))
def export_results(key: str, query: ExportQuery) -> ExportOut | Response:
    """Per-variant, per-metric results of the latest report, as JSON or CSV."""
    report = analysis.get_latest_report(db_session(), key)
    if query.format == "json":
        return ExportOut.model_validate(analysis.export_document(key, report))
    lines = analysis.export_csv_lines(analysis.export_rows(report.body))
    return Response("".join(lines), mimetype="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{key}-results.csv"'})
