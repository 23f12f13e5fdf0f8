"""`spin-jax report RUN`: (re)builds a run folder's report.html, figures/ and MODEL_CARD.md
from its report.json (spin_jax/report_html.py)."""

from __future__ import annotations


def cmd_report(args):
    from spin_jax.report_html import write_report

    print(f"report: {write_report(args.run)}")


def add_commands(sub) -> None:
    p = sub.add_parser(
        "report", help="(re)build RUN/report.html, figures/ and MODEL_CARD.md from report.json"
    )
    p.add_argument("run", help="a folder written by `spin-jax fit`")
    p.set_defaults(func=cmd_report)
