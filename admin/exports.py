"""Downloads of a report's per-variant, per-metric rows (same rows as the API export)."""

from __future__ import annotations

import json

from flask import Response

from experiments.models import Report
from experiments.services.analysis import export_csv_lines, export_document, export_rows


def download(key: str, report: Report, fmt: str) -> Response:
    """The export as an attachment named after the experiment."""
    disposition = {"Content-Disposition": f'attachment; filename="{key}-results.{fmt}"'}
    if fmt == "json":
        return Response(json.dumps(export_document(key, report), default=str),
                        mimetype="application/json", headers=disposition)
    return Response(export_csv_lines(export_rows(report.body)), mimetype="text/csv",
                    headers=disposition)
