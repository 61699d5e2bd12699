"""Write the README's generated parts from results folders, so that they cannot go stale: the voc-mini answer near
the top (from results/reference/voc-mini's tables) and the smoke tables (from a run's results/smoke).

Each part sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->` lines and is replaced whole; the
text around it is never touched. A part whose folder has no tables is left as it is, and said so.

    bash run_all.sh smoke && python -m evaluation.readme          # after a fresh smoke run
"""

import argparse
import re
from pathlib import Path

from cebench.config import benchmarks_path
from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_text, display_path
from cebench.logs import get_logger

# pandas (evaluation.reporting's answer and tables) is imported where it is used: --help answers without it


def get_args_parser():
    repo = benchmarks_path().parent
    p = argparse.ArgumentParser("python -m evaluation.readme", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)
    p.add_argument("--readme", default=str(repo / "README.md"), help="the file to update in place")
    p.add_argument("--smoke", default=str(repo / "results" / "smoke"), help="results of a smoke run")
    p.add_argument("--voc-mini", default=str(repo / "results" / "reference" / "voc-mini"),
                   help="the voc-mini reference tables")
    return p


def _cells(path):
    import pandas as pd

    table = pd.read_csv(path, keep_default_na=False, na_values=[""]).set_index("key")
    return table, [c for c in table.columns if f"{c} low" in table and f"{c} high" in table]


def answer_of(folder):
    """The answer table of a folder of table CSVs (Tables 2, 3 and 1 where present), or None."""
    from evaluation.reporting import answer
    from evaluation.reporting.paper_tables import TABLE2_TASKS

    folder = Path(folder)
    if not (folder / "table2.csv").is_file():
        return None
    t2, columns2 = _cells(folder / "table2.csv")
    t3, layers = _cells(folder / "table3.csv") if (folder / "table3.csv").is_file() else (None, ())
    t1, _ = _cells(folder / "table1.csv") if (folder / "table1.csv").is_file() else (None, ())
    return answer.answer(t2, [c for c in columns2 if c.split(" (")[0] in TABLE2_TASKS], t3, layers, t1)


def voc_mini_part(folder, repo):
    from evaluation.reporting import answer

    found = answer_of(folder)
    if found is None:
        return None
    lines = [f"**{answer.headline(found)}**", "",
             f"From the tables in `{display_path(folder, repo)}/` (`python -m evaluation.readme` writes this part; "
             "the same numbers as those tables):",
             ""] + [f"- {line}" for line in answer.summary(found)]
    return "\n".join(lines) + f"\n\n{answer.NOTE} The controls: `answer.md` of a run, or the report's first section."


def _table_body(md):
    """A table .md of evaluation.tables without its '# ' title line."""
    return "\n".join(line for line in Path(md).read_text().splitlines() if not line.startswith("# ")).strip()


def smoke_part(folder):
    folder = Path(folder)
    names = [("table2.md", "Table 2"), ("table1.md", "Table 1"), ("table3.md", "Table 3"), ("answer.md", "The answer")]
    if not all((folder / n).is_file() for n, _ in names):
        return None
    titles = {"table2.md": "transfer", "table1.md": "inpainting of the central hole of held-out images",
              "table3.md": "linear probes of the frozen layers", "answer.md": "ce against random init and the controls"}
    return "\n\n".join(f"**{title}** ({titles[name]}):\n\n{_table_body(folder / name)}" for name, title in names)


def replace_part(text, name, body):
    """The text with the part `name` replaced by `body`; a missing pair of markers is an error."""
    pattern = re.compile(rf"(<!-- generated:{re.escape(name)} -->\n).*?(<!-- /generated:{re.escape(name)} -->)",
                         re.S)
    if not pattern.search(text):
        raise CebenchError(f"no '<!-- generated:{name} -->' ... '<!-- /generated:{name} -->' lines in the README")
    return pattern.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    log, repo, readme = get_logger("readme"), benchmarks_path().parent, Path(args.readme)
    if not readme.is_file():
        raise CebenchError(f"--readme {readme}: no such file")
    text = readme.read_text()
    written = []
    for name, body, folder in (("voc-mini-answer", voc_mini_part(args.voc_mini, repo), args.voc_mini),
                               ("smoke-tables", smoke_part(args.smoke), args.smoke)):
        if body is None:
            log.warning("%s: no tables under %s, left as it is", name, folder)
            continue
        text = replace_part(text, name, body)
        written.append(name)
    atomic_write_text(readme, text)
    log.info("wrote %s (%s)", readme, ", ".join(written) or "nothing changed")
    return {"readme": str(readme), "parts": written}


if __name__ == "__main__":
    run_cli(main)
