"""The command line of `bash run_all.sh` (cebench.suite): flags, profiles in --help."""

import argparse
import textwrap
from pathlib import Path

from cebench.config import STAGES, load_benchmarks
from cebench.errors import CebenchError
from cebench.stages import names, spoken


def _profiles_help():
    """The profiles of benchmarks.yaml, their descriptions and what run_all runs for each."""
    try:
        data = load_benchmarks()
    except CebenchError as err:
        return f"profiles: cannot read benchmarks.yaml ({err})"
    lines = [f"profiles ({data['_path']}):"]
    for name, prof in data["profiles"].items():
        lines.append(f"  {name}{'  [default]' if name == data.get('default_profile') else ''}")
        stages = {s: (spec or {}).get("inits") for s, spec in ((prof.get("run") or {}).get("stages") or {}).items()}
        runs = ", ".join(f"{s} [{', '.join(stages[s])}]" if stages[s] else s for s in STAGES if s in stages)
        for text in (" ".join(str(prof.get("description", "")).split()), f"runs: {runs}"):
            lines += textwrap.wrap(text, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines) + "\n\n" + textwrap.fill(
        "inits: ce = the context encoder that the pretrain stage trains; autoencoder = the same network trained "
        "without a mask on the whole image (the paper's control); ce-untrained = the context encoder's weights at "
        "step 0; random = the paper's Gaussian initialisation; hog = HOG features (retrieval, inpainting); "
        "supervised = your ImageNet AlexNet, run only when --supervised PATH is given. Each stage reads its other "
        "settings from its own section of the profile.",
        100)


def _abspath(value):
    return str(Path(value).expanduser().resolve())


def get_args_parser():
    parser = argparse.ArgumentParser(
        prog="run_all.sh", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_profiles_help(),
        allow_abbrev=False,  # a misspelt flag (--max-step) is an error, never taken for another
        description=textwrap.fill(
            "Run a profile of benchmarks.yaml end to end: (synthetic data,) pretraining, classification, detection, "
            "segmentation, retrieval, inpainting, per-layer probes, tables, report.html; then print Table 2. Outputs "
            "go to results/<profile>/ with a run.log. Rerunning the same command resumes: a stage whose output exists "
            "with a matching stamp is skipped; a changed profile section, flag or input weights reruns it.", 100))
    parser.add_argument("profile", nargs="?", default=None, help="profile name (default: the file's default_profile)")
    parser.add_argument("--profile", dest="profile_flag", default=None, metavar="NAME",
                        help="the profile, as every entry point takes it (the same as the positional PROFILE)")
    g = parser.add_argument_group("data and weights")
    g.add_argument("--voc-root", type=_abspath, metavar="DIR",
                   help="VOCdevkit (the folder holding VOC2007/) for every transfer and evaluation stage")
    g.add_argument("--images", type=_abspath, metavar="DIR",
                   help="folder of unlabelled images for pretraining (the paper profile needs one)")
    g.add_argument("--sbd-root", type=_abspath, metavar="DIR",
                   help="SBD's dataset/ folder (cls/*.mat, train.txt, val.txt) for segmentation's extra masks "
                   "(the paper profile's segment section sets data/sbd/dataset)")
    g.add_argument("--supervised", type=_abspath, metavar="PATH",
                   help="a torchvision AlexNet state_dict (ImageNet-trained): adds the supervised row")
    g.add_argument("--ce", type=_abspath, metavar="PATH", help="use this ce.pt and skip pretraining")
    g = parser.add_argument_group("passed to the stages that take them")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"])
    g.add_argument("--seed", type=int, metavar="N")
    g.add_argument("--max-steps", type=int, metavar="N",
                   help=f"cap on the optimisation steps of {spoken(names(trains=True))}, for quick trials")
    g.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                   help=f"run {spoken(names(trains=True))} with torchrun on N processes of this node "
                   "(N GPUs, DistributedDataParallel; batch sizes stay global); several nodes: run the stages' "
                   "commands (--dry-run prints them) under torchrun --nnodes")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads of every stage that computes (0: torch's default; 1 on shared machines, "
                   "where over-subscribed threads stall each other); not part of the stamps, so it reruns nothing")
    g = parser.add_argument_group("run")
    g.add_argument("--results", type=_abspath, metavar="DIR", help="default: results/<profile> of the checkout")
    g.add_argument("--dry-run", action="store_true", help="print the commands (and what is up to date); run nothing")
    g.add_argument("--force", action="store_true", help="rerun every stage, ignoring stamps")
    g = parser.add_argument_group("check (a few steps of every stage, and what the full run would cost)")
    g.add_argument("--check", action="store_true", help="instead of the run: every stage of the profile for a few "
                   "steps on --device (python -m evaluation.check), one table of images/s (step alone and whole "
                   "loop), peak memory and the projected time of each stage's full schedule, then the projected "
                   "total; written to results/<profile>-check/, never into results/<profile>/. A profile without "
                   "synthetic data of its own is checked on a synthetic stand-in at its image size")
    g.add_argument("--check-steps", type=int, metavar="N", help="timed steps per stage and side (default 6)")
    return parser


def profile_name(args):
    """The profile given positionally or with --profile (both only when they agree), else None (the default)."""
    if args.profile and args.profile_flag and args.profile != args.profile_flag:
        raise CebenchError(f"two profiles given: {args.profile!r} and --profile {args.profile_flag!r}; pass one")
    return args.profile or args.profile_flag
