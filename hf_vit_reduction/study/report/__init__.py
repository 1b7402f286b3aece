"""`hf-vit-reduction report`: training runs to the paper's tables and plots (see `command`).

`runs` finds and reads the runs, `build` computes every number, `markdown` and `plots` render them, `command` checks
the inputs and writes report.md, report.json and the plots.
"""

from .build import build_report
from .command import main, report_runs, write_report
from .markdown import results_section
from .plots import PLOTS
from .runs import RunProblem, collect_runs, find_runs, load_run

__all__ = [
    "PLOTS",
    "RunProblem",
    "build_report",
    "collect_runs",
    "find_runs",
    "load_run",
    "main",
    "report_runs",
    "results_section",
    "write_report",
]
