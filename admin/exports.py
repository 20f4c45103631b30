"""Downloads of a report's per-variant, per-metric rows (same rows as the API export)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from flask import Response

from experiments.models import Report
from experiments.services.analysis import EXPORT_COLUMNS, export_rows


def _csv_lines(rows: list[dict[str, Any]]) -> Iterator[str]:
    """Stream the CSV line by line instead of building it in memory."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in [None, *rows]:
        if row is not None:
            writer.writerow(row)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def download(key: str, report: Report, fmt: str) -> Response:
    """The export as an attachment named after the experiment."""
    rows = export_rows(report.body)
    disposition = {"Content-Disposition": f'attachment; filename="{key}-results.{fmt}"'}
    if fmt == "json":
        body = {"experiment": key, "report_id": report.id,
                "computed_at": report.body.get("computed_at"), "rows": rows}
        return Response(json.dumps(body, default=str), mimetype="application/json",
                        headers=disposition)
    return Response(_csv_lines(rows), mimetype="text/csv", headers=disposition)
