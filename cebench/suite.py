"""The suite runner behind `bash run_all.sh`: every stage of a profile in order, resumable, logged.

Reads the profile's `run:` section of benchmarks.yaml, runs each stage as its own process
(`python -m pretrain.train ...`, `python -m transfer.classify ...`), writes everything under results/<profile>/,
skips a stage whose output and stamp match the resolved command and profile, stops at the first failure, writes
report.html (evaluation.report) after the tables and prints Table 2 at the end. Stages are only ever run as
subprocesses: plumbing imports no model code.

    bash run_all.sh                                   # smoke: synthetic data, the whole pipeline on a CPU
    bash run_all.sh voc-mini --max-steps 200 --dry-run
    bash run_all.sh paper --images /data/imagenet/train --voc-root /data/VOCdevkit --supervised alexnet.pth
"""

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from cebench.config import get_profile
from cebench.deps import STAGE_MODULES, install_hint, missing_for_stages
from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_json, display_path, make_dirs
from cebench.locks import hold_outputs
from cebench.processes import Tee, child_env, run_process
from cebench.records import git_info, read_record, record_name, results_dir
from cebench.stages import BY_NAME, PASS_THROUGH_KEYS, STAGES, Stage
from cebench.suite_args import get_args_parser, profile_name

REPO = Path(__file__).resolve().parents[1]
INITS = ("ce", "random", "kmeans", "supervised", "autoencoder", "ce-untrained", "hog")  # hog: retrieval, inpainting
# The weights the pretrain stage writes (results/<init>.pt, ce.pt for ce) and the flags that make them: the paper's
# autoencoder control (no mask, the whole image reconstructed) and the untrained context encoder (step 0).
PRETRAINED = {"ce": [], "autoencoder": ["--mask", "none"], "ce-untrained": ["--max-steps", "0"]}
RUN_KEYS = {"stages", "synthetic", "supervised"}
STAGE_KEYS = {"inits", "module"}
SYNTHETIC_KEYS = {"out", "n_train", "n_val", "size", "seed", "seg_fraction"}
BAR = "=" * 100
DATA = Stage("data", "voc.synthetic", runs="once", rebuilt=True)  # the synthetic devkit: a job, not a stage


def row_of(stage):
    """The row of the stage table behind a job (the synthetic-data job has a row of its own)."""
    return DATA if stage == DATA.name else BY_NAME[stage]


@dataclass
class Job:
    """One process of the suite: a stage run for one initialisation, writing `out`."""

    stage: str
    init: str | None
    argv: list  # after the python executable: ["-m", module, ...]
    out: Path
    inputs: list = field(default_factory=list)  # weight files whose content the result depends on
    always: bool = False  # data generation, tables and report: cheap, run every time

    @property
    def label(self):
        return f"{self.stage} ({self.init})" if self.init else self.stage

    @property
    def stamp(self):
        """Next to the output: the hash it was made with and whether it finished."""
        return self.out.with_name(self.out.name + ".stamp")


def _shown(path):
    """A path as commands show it: relative to the checkout when inside it (children run from there)."""
    return display_path(path, REPO)


def _profile_path(profile, value):
    return Path(value) if os.path.isabs(value) else (Path(profile["_dir"]) / value).resolve()


def run_section(profile):
    """The profile's `run:` section, shape-checked; unknown keys and inits are errors."""
    where = f"{profile.get('_path', 'benchmarks.yaml')}: profile {profile['_name']!r}, run"
    run = profile.get("run")
    if not isinstance(run, dict) or not isinstance(run.get("stages"), dict):
        raise CebenchError(f"{where}: missing; it needs a 'stages' mapping (what run_all.sh runs)")
    for bad, keys in ((set(run) - RUN_KEYS, "keys"), (set(run["stages"]) - {s.name for s in STAGES}, "stages")):
        if bad:
            raise CebenchError(f"{where}: unknown {keys} {sorted(bad)}")
    for stage, spec in run["stages"].items():
        spec = spec or {}
        if not isinstance(spec, dict) or set(spec) - STAGE_KEYS:
            raise CebenchError(f"{where}.stages.{stage}: expected a mapping with keys {sorted(STAGE_KEYS)}")
        row = row_of(stage)
        inits = spec.get("inits", ["ce"] if row.runs == "pretrain" else [])
        allowed = tuple(PRETRAINED) if row.runs == "pretrain" else INITS if row.hog else INITS[:-1]
        if row.runs != "once" and (not isinstance(inits, list) or not inits or set(inits) - set(allowed)):
            raise CebenchError(f"{where}.stages.{stage}.inits: expected a list of {list(allowed)}, got {inits!r}")
    synthetic = run.get("synthetic")
    if synthetic is not None and (not isinstance(synthetic, dict) or set(synthetic) - SYNTHETIC_KEYS
                                  or "out" not in synthetic):
        raise CebenchError(f"{where}.synthetic: expected a mapping with 'out' and keys of {sorted(SYNTHETIC_KEYS)}")
    return run


def _pass_through(stage, opts):
    """run_all's overrides that this stage takes, as command-line flags."""
    argv = []
    for key in PASS_THROUGH_KEYS:
        value = getattr(opts, key)
        if value is not None and key in row_of(stage).takes:
            argv += [f"--{key.replace('_', '-')}", _shown(value) if key in ("voc_root", "images", "sbd_root")
                     else str(value)]
    return argv


def plan(profile, opts):
    """The jobs of a run in order: synthetic data (smoke), pretraining, transfers, evaluations, tables, report."""
    run, name = run_section(profile), profile["_name"]
    results = Path(opts.results or results_dir(name)).resolve()
    stages = run["stages"]
    supervised = opts.supervised or (run.get("supervised") and str(_profile_path(profile, run["supervised"])))
    ce = Path(opts.ce).resolve() if opts.ce else results / "ce.pt"
    weights = {"ce": ce, "supervised": supervised and Path(supervised),  # a file per init; others (random) are
               **{init: results / f"{init}.pt" for init in PRETRAINED if init != "ce"}}  # a spec by their name
    jobs = []
    if run.get("synthetic") and not (opts.voc_root and opts.images):  # some stage still reads the synthetic data
        syn = dict(run["synthetic"])
        argv = ["-m", DATA.module, "--out", _shown(_profile_path(profile, syn.pop("out")))]
        for key, value in syn.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        jobs.append(Job(DATA.name, "synthetic", argv, REPO / argv[3], always=True))
    for row in STAGES:  # the pipeline's order, whatever the order in the YAML
        stage = row.name
        if stage not in stages:
            continue
        spec, common = stages[stage] or {}, ["--profile", name]
        module = spec.get("module", row.module)
        if row.runs == "pretrain":
            for init in spec.get("inits", ["ce"]):
                if not (init == "ce" and opts.ce):
                    argv = ["-m", module, *common, "--out", _shown(weights[init]), *_pass_through(stage, opts),
                            *PRETRAINED[init]]  # last: --max-steps 0 wins over a passed-through cap
                    jobs.append(Job(stage, init, argv, weights[init]))
            continue
        if row.runs == "once":  # from the records (tables, report: cheap, rebuilt every time)
            apart = stage == "curve"  # its own folder: its checkpoints are no rows of the tables
            out = (results.with_name(f"{results.name}-curve") if apart else results) / row.output
            argv = ["-m", module, *common] + (["--out-dir", _shown(out.parent)] if apart else
                                              ["--results", _shown(results)])
            jobs.append(Job(stage, None, argv, out, always=row.rebuilt))
            continue
        for init in spec["inits"]:
            if init == "supervised" and not supervised:
                continue
            path = weights.get(init)
            source = (["--features", "hog"] if init == "hog" else
                      ["--weights", _shown(path) if path else init])
            out = results / record_name(stage, init)  # the name the stage gives its record by default
            argv = ["-m", module, *common, *source, "--out", _shown(out), *_pass_through(stage, opts)]
            inputs = [path.resolve()] if path else []
            jobs.append(Job(stage, init, argv, out, inputs))
    made = {j.init for j in jobs if j.stage == "pretrain"} | ({"ce"} if opts.ce else set())
    missing = sorted({j.init for j in jobs if j.init in PRETRAINED and j.stage != "pretrain"} - made)
    if missing:
        raise CebenchError(f"profile {name!r} does not pretrain {missing}: add them to run.stages.pretrain.inits "
                           "(or pass --ce PATH, a ce.pt, for the 'ce' runs)")
    return jobs, results


def check_stage_sections(profile, jobs, env=None):
    """Every stage section of the profile against its entry point's flags, and every stage's command line as the
    stage will parse it, in one child process (cebench.preflight): a typo in any section fails now, with one line
    per problem, not hours into the run. A stage that run.stages points at a module of its own is left to it."""
    stages = (profile.get("run") or {}).get("stages") or {}
    ours = {row.name for row in STAGES if (stages.get(row.name) or {}).get("module", row.module) == row.module}
    request = {"profile": profile["_name"],
               "sections": {row.name: row.module for row in STAGES if row.name in ours and profile.get(row.name)},
               "jobs": [{"stage": j.stage, "module": j.argv[1], "argv": j.argv[2:]} for j in jobs if j.stage in ours]}
    if not request["sections"] and not request["jobs"]:
        return
    proc = subprocess.run([sys.executable, "-m", "cebench.preflight"], input=json.dumps(request), cwd=REPO,
                          env=env or child_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or [f"exit status {proc.returncode}"]
        if "Traceback" in proc.stderr:  # a bug of the check itself: its last line
            lines = lines[-1:]
        raise CebenchError(f"profile {profile['_name']!r} does not pass the check of its stages: " + "; ".join(lines))


def preflight(profile, jobs, opts):
    """Clear errors for missing data and for stage sections or flags that a stage would refuse, before anything runs
    (the paper profile needs the user's data)."""
    made = [j.out for j in jobs if j.stage == "data"]  # exists once the data job has run
    problems = [f"weights not found: {p}" for j in jobs for p in j.inputs if j.stage != "pretrain"
                and not (p.is_file() or any(k.stage == "pretrain" and k.out == p for k in jobs))]
    needs = {}  # path -> (what, flag, hint)
    for job in jobs:
        section = profile.get(job.stage) or {}
        if job.stage == "pretrain":
            path = opts.images or section.get("images")
            needs[path] = ("folder of unlabelled images for pretraining", "--images", "e.g. ImageNet's train/")
        elif "voc_root" in row_of(job.stage).takes:
            path = opts.voc_root or section.get("voc_root") or (profile.get("common") or {}).get("voc_root")
            needs[path] = ("VOCdevkit", "--voc-root", "the folder that holds VOC2007/")
        if "sbd_root" in row_of(job.stage).takes and (opts.sbd_root or section.get("sbd_root")):
            needs[opts.sbd_root or section["sbd_root"]] = ("SBD dataset folder", "--sbd-root",
                                                           "SBD's dataset/, holding cls/ and train.txt")
    for path, (what, flag, hint) in needs.items():
        path = path and _profile_path(profile, path)
        if not path:
            problems.append(f"it sets no {what}: pass {flag} DIR ({hint})")
        elif not path.is_dir() and not any(path.is_relative_to(m) for m in made):
            problems.append(f"no {what} at {path}: pass {flag} DIR ({hint})")
    missing = missing_for_stages(dict.fromkeys(j.stage for j in jobs))  # setup.cfg's extras (cebench.deps)
    problems += [f"stage {stage} needs {', '.join(packages)}, not installed here "
                 f"({install_hint(STAGE_MODULES[stage][0])})" for stage, packages in missing.items()]
    if problems:
        raise CebenchError(f"profile {profile['_name']!r}: " + "; ".join(dict.fromkeys(problems)))
    check_stage_sections(profile, jobs)


_DIGESTS = {}


def _digest(path):
    """sha256 of a weights file (cached by path, size and mtime); 'missing' before it exists."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    key = (str(path), path.stat().st_size, path.stat().st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _without_threads(argv):
    """A command without run_all's --threads N: how many cores compute is no part of what a result depends on (the
    tables pool runs of any thread count, evaluation.reporting.cells), so adding it reruns nothing."""
    out, skip = [], False
    for arg in argv:
        if not skip and arg != "--threads":
            out.append(arg)
        skip = arg == "--threads"
    return out


def job_hash(job, profile):
    """What a result depends on: its command, the profile sections its entry point reads, its input weights."""
    content = {"argv": _without_threads(job.argv), "common": profile.get("common"), "section": profile.get(job.stage),
               "inputs": {_shown(p): _digest(p) for p in job.inputs}}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def job_state(job, digest, force):
    """skip (up to date), resume (same config, unfinished), changed (other config) or fresh."""
    try:
        stamp = json.loads(job.stamp.read_text())
    except (OSError, json.JSONDecodeError):
        stamp = None
    if stamp is None and not force:
        return "fresh"
    if force or stamp.get("hash") != digest:
        return "changed"
    return "skip" if stamp.get("status") == "done" and job.out.exists() else "resume"


_FLAGS = {}


def _supports(module, flag, env):
    """Whether an entry point's --help lists `flag` (asked only when a stage is rerun over old outputs)."""
    if module not in _FLAGS:
        proc = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=env, capture_output=True,
                              text=True)
        _FLAGS[module] = proc.stdout
    return flag in _FLAGS[module].split()


def _check_output(job):
    """A finished stage must have written its output; a record must be well formed and of its task."""
    if not job.out.exists():
        raise CebenchError(f"{job.label} exited with status 0 but did not write {_shown(job.out)}")
    task = row_of(job.stage).task
    if task:
        record = read_record(job.out)
        if record["task"] != task:
            raise CebenchError(f"{_shown(job.out)}: record of task {record['task']!r}, expected {task!r}")
        if isinstance(record.get("layers"), dict) and record["layers"]:  # a probe's value is its deepest layer's
            deepest = list(record["layers"])[-1]
            return f"{record['metric']} = {record['value']} ({deepest}, the deepest layer probed)"
        return f"{record['metric']} = {record['value']}"
    return ""


def _extra_flags(job, state, env):
    """--resume to continue an interrupted run, --overwrite to replace a stale one, where the stage has them."""
    stale = state == "changed" or (state == "fresh" and job.out.exists())
    module = job.argv[1]
    if state == "resume" and _supports(module, "--resume", env):
        return ["--resume"]
    if stale and _supports(module, "--overwrite", env):
        return ["--overwrite"]
    return []


def launcher(job, opts):
    """torchrun in front of the training stages when --nproc-per-node asks for several processes (one node)."""
    if (opts.nproc_per_node or 1) > 1 and row_of(job.stage).trains:
        return ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={opts.nproc_per_node}"]
    return []


def run_job(job, profile, opts, tee, env):
    """Run one job unless its stamp says it is up to date; returns (status, seconds, summary text)."""
    digest = job_hash(job, profile)
    state = "run" if job.always else job_state(job, digest, opts.force)
    if state == "skip":
        tee.print(f"up to date, skipped: {_shown(job.out)} (stamp matches the command and profile)")
        return "skipped", 0.0, _check_output(job)
    argv = (launcher(job, opts) + job.argv
            + ([] if opts.dry_run else _extra_flags(job, state, env)))
    tee.print(f"$ python {shlex.join(argv)}" + (f"    # {state} run" if state in ("resume", "changed") else ""))
    if opts.dry_run:
        return "dry-run", 0.0, ""
    stamp = {"hash": digest, "status": "running", "command": ["python", *argv], "started": time.time()}
    if not job.always:
        atomic_write_json(job.stamp, stamp)
    start = time.perf_counter()
    status = run_process(argv, tee, env)
    seconds = time.perf_counter() - start
    if status != 0:
        tee.print(f"\n{BAR}\nFAILED: {job.label} exited with status {status} after {seconds:.0f} s\n"
                  f"command (run from {REPO}):\n  {shlex.quote(sys.executable)} {shlex.join(argv)}\n"
                  f"log: {_shown(tee.log.name) if tee.log else '-'}\n{BAR}")
        raise CebenchError(f"stage {job.label} failed (exit status {status}); fix the cause and rerun the same "
                           "command: finished stages are skipped")
    summary = _check_output(job)
    if not job.always:
        atomic_write_json(job.stamp, {**stamp, "status": "done", "wall_time_s": round(seconds, 1)})
    tee.print(f"-- {job.label} done in {seconds:.0f} s" + (f": {summary}" if summary else ""))
    return "ran", seconds, summary


def _table2(results):
    """The Table 2 that evaluation.tables wrote (results/<profile>/table2.md or below)."""
    found = [results / "table2.md"] if (results / "table2.md").is_file() else sorted(results.rglob("table2.md"))
    if not found:
        raise CebenchError(f"evaluation.tables finished but wrote no table2.md under {_shown(results)}")
    return found[0]


SYNTHETIC_BANNER = """{bar}
SYNTHETIC DATA. Profile {name!r} runs on a small dataset that the project draws itself ({root}):
shapes standing for 6 VOC classes on textured backgrounds, in the VOCdevkit layout. It checks that every
stage runs end to end; its numbers say nothing about context encoders on real images (use voc-mini or paper).
"""


def _report(tee, rows, results, synthetic):
    tee.print(f"\n{BAR}\nsummary ({_shown(results)})")
    for label, status, seconds, summary in rows:
        tee.print(f"  {label:<24} {status:<8} {seconds:7.0f} s  {summary}")
    table = _table2(results)
    tee.print(f"\n{BAR}\nTable 2, our values (the whole table, with the paper's: {_shown(table)})\n{BAR}")
    narrow = table.with_suffix(".txt")  # within 100 columns, as evaluation.tables wrote it; else the table as it is
    tee.print((narrow if narrow.is_file() else table).read_text().rstrip())
    answer = table.with_name("answer.txt")
    if answer.is_file() and answer.read_text().strip():
        tee.print(f"\nThe answer, ce against random init (with the controls: {_shown(answer.with_suffix('.md'))})")
        tee.print(answer.read_text().rstrip())
    if (results / "report.html").is_file():
        tee.print(f"\nreport (tables, charts, curves, examples, provenance): {_shown(results / 'report.html')}")
    if synthetic:
        tee.print(f"\nNOTE: every number above was measured on SYNTHETIC data ({synthetic}); it checks the "
                  "pipeline, not the paper.")


def check(profile, opts):
    """`run_all.sh PROFILE --check`: python -m evaluation.check in a child process, logged to
    results/<profile>-check/check.log (each check replaces the previous check's files there)."""
    out_dir = Path(opts.results or results_dir(f"{profile['_name']}-check")).resolve()
    argv = ["-m", "evaluation.check", "--profile", profile["_name"], "--out-dir", _shown(out_dir)]
    for key in ("check_steps", "device", "seed", "threads", "voc_root", "images"):
        value = getattr(opts, key)
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", _shown(value) if key in ("voc_root", "images") else str(value)]
    if opts.dry_run:
        print(f"$ python {shlex.join(argv)}")
        return {"profile": profile["_name"], "check": str(out_dir), "status": "dry-run"}
    tee = Tee(make_dirs(out_dir) / "check.log")
    try:
        tee.print(f"{BAR}\nrun_all {profile['_name']} --check -> {_shown(out_dir)}  "
                  f"({time.strftime('%Y-%m-%d %H:%M:%S')})\n$ python {shlex.join(argv)}\n{BAR}")
        status = run_process(argv, tee, child_env())
    finally:
        tee.close()
    if status != 0:
        raise CebenchError(f"the check of {profile['_name']!r} failed (exit status {status}); see "
                           f"{_shown(out_dir / 'check.log')}")
    return {"profile": profile["_name"], "check": str(out_dir), "status": "done"}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    if args.nproc_per_node < 1:
        raise CebenchError(f"--nproc-per-node must be at least 1, got {args.nproc_per_node}")
    if args.check_steps is not None and not args.check:
        raise CebenchError("--check-steps applies to --check only")
    ignored = [flag for flag, given in (("--max-steps", args.max_steps is not None), ("--ce", args.ce),
                                        ("--supervised", args.supervised), ("--force", args.force),
                                        ("--nproc-per-node", args.nproc_per_node > 1)) if given]
    if args.check and ignored:  # a check times one process on fixed steps and runs no stage of the profile
        raise CebenchError(f"{', '.join(ignored)} do(es) not apply to --check (it checks one process; see --help)")
    profile = get_profile(profile_name(args))
    if args.check:
        return check(profile, args)
    jobs, results = plan(profile, args)
    preflight(profile, jobs, args)
    synthetic = next((j.argv[3] for j in jobs if j.stage == "data"), None)
    # one suite per results folder at a time (cebench.locks); a dry run writes nothing and takes no lock
    if not args.dry_run:
        make_dirs(results)  # a file in its way: one line naming the results folder
    with nullcontext() if args.dry_run else hold_outputs([results]):
        return _run_jobs(args, argv, profile, jobs, results, synthetic)


def _run_jobs(args, argv, profile, jobs, results, synthetic):
    tee = Tee(None if args.dry_run else make_dirs(results) / "run.log")
    env, rows = child_env(), []
    try:
        sha = git_info().get("git_commit", "not a git checkout")
        tee.print(f"{BAR}\nrun_all {profile['_name']} -> {_shown(results)}  ({time.strftime('%Y-%m-%d %H:%M:%S')},"
                  f" commit {sha[:12]})\nargs: {shlex.join(sys.argv[1:] if argv is None else argv)}")
        if synthetic:
            tee.print(SYNTHETIC_BANNER.format(bar=BAR, name=profile["_name"], root=synthetic))
        for n, job in enumerate(jobs, 1):
            tee.print(f"{BAR}\n[{n}/{len(jobs)}] {job.label}  ->  {_shown(job.out)}\n{'-' * len(BAR)}")
            rows.append((job.label, *run_job(job, profile, args, tee, env)))
        if not args.dry_run:
            _report(tee, rows, results, synthetic)
    except KeyboardInterrupt:  # the running stage got the same Ctrl-C and kept its last checkpoint
        tee.print("\ninterrupted: rerun the same command to resume (finished stages are skipped)")
        raise SystemExit(130) from None
    finally:
        tee.close()
    return {"profile": profile["_name"], "results": str(results), "synthetic": bool(synthetic),
            "jobs": [{"stage": j.stage, "init": j.init, "out": str(j.out), "status": r[1], "summary": r[3]}
                     for j, r in zip(jobs, rows, strict=False)]}


if __name__ == "__main__":
    run_cli(main)
