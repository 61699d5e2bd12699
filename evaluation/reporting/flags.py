"""The flags of the reporting entry points (tables, report), without pandas or matplotlib: `--help` and
`--print-config` answer before the code that draws and formats is imported (tests/test_fast_help.py)."""

from pathlib import Path

PUBLISHED = Path(__file__).parents[1] / "published.csv"  # the paper's numbers (evaluation/published.csv)


def add_results_args(parser, *, out_help, published_help):
    """--results (the records' folder), --out and --published: what the tables and the report read and write."""
    parser.add_argument("--results", default=None, help="folder of result records (default results/<profile>)")
    parser.add_argument("--out", default=None, help=out_help)
    parser.add_argument("--published", default=str(PUBLISHED), help=published_help)
    return parser
