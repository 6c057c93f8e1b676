"""The HTML report of a run: ``report.html`` in the run directory."""

from __future__ import annotations

from fedsim.report.page import REPORT_NAME, write_report
from fedsim.report.rundir import ReportError

__all__ = ["REPORT_NAME", "ReportError", "write_report"]
