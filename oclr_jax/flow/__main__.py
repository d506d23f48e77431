"""Optical flow for OCLR, written as the official RAFT scripts write it.

    python -m oclr_jax.flow DAVIS/ --raft-checkpoint raft-things.pth
    python -m oclr_jax.flow frames/ --out flows/ --raft-checkpoint raft-things.pth --gaps 1 -1 2 -2
    python -m oclr_jax.flow clip.mp4 --out flows/ --method dis

INPUT: a dataset root with JPEGImages/480p/<seq>/ (DAVIS) or JPEGImages/<seq>/ (flows go to
INPUT/Flows_gap{g}/ by default, where `python -m oclr_jax.eval` reads them), a folder of sequence
folders, one sequence folder, or a video (these need --out).  Output:
OUT/Flows_gap{g}/<seq>/<frame>.flo for every gap; frames padded to multiples of 8 as RAFT's
InputPadder does and the flow kept at the padded size.  Finished files are skipped, so rerunning
resumes; Ctrl-C or SIGTERM stops after the current batch.  Exit status 2 on a bad input or
checkpoint (nothing half-written).  See docs/flow.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from oclr_jax.errors import StopSignal, UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m oclr_jax.flow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="dataset root, folder of sequence folders, sequence folder or video")
    parser.add_argument("--out", help="output root (default: the dataset root for JPEGImages layouts)")
    parser.add_argument("--method", choices=("raft", "dis"), default="raft",
                        help="raft (needs --raft-checkpoint) or dis (OpenCV DIS, no weights, noisier)")
    parser.add_argument("--raft-checkpoint", help="raft-things.pth (official file, needs torch to read) "
                        "or its .npz export")
    parser.add_argument("--gaps", type=int, nargs="+", default=[1, -1],
                        help="frame gaps (default: 1 -1, the official runs)")
    parser.add_argument("--iters", type=int, default=20, help="RAFT refinement iterations (official: 20)")
    parser.add_argument("--pairs-per-device", type=int, default=4,
                        help="RAFT pairs per device per step (official batch: 4); lower it if memory is short")
    parser.add_argument("--corr", choices=("all_pairs", "on_the_fly"), default="all_pairs",
                        help="correlation: the official all-pairs volume, or computed per window each "
                             "iteration (less memory, slower on CPU; see docs/flow.md)")
    parser.add_argument("--max-frames", type=int, default=None, help="video input: frames to read")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute files that exist (default: skip them, i.e. resume)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="read a .pth holding pickled objects (only files from a trusted source)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


class UsageError(UserError, ValueError):
    """A wrong combination of flags."""


def _check_args(args) -> None:
    if any(g == 0 for g in args.gaps):
        raise UsageError("--gaps: 0 is not a gap (use e.g. 1 -1)")
    if len(set(args.gaps)) != len(args.gaps):
        raise UsageError(f"--gaps: repeated gap in {args.gaps}")
    if args.iters < 1:
        raise UsageError(f"--iters {args.iters}: needs at least 1 iteration")
    if args.pairs_per_device < 1:
        raise UsageError(f"--pairs-per-device {args.pairs_per_device}: needs at least 1")
    if args.method == "raft" and not args.raft_checkpoint:
        raise UsageError("--raft-checkpoint is required for --method raft (the official weights "
                         "raft-things.pth from the RAFT authors); or pass --method dis for OpenCV DIS "
                         "flow without weights (much noisier on real footage)")
    if args.method == "dis" and args.raft_checkpoint:
        raise UsageError("--raft-checkpoint given with --method dis; drop one of them")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    from tqdm import tqdm

    from oclr_jax.flow import frames, run

    targets = []  # (sequences, out root)
    for path in args.inputs:
        sequences, dataset_root = frames.find_sequences(path, args.max_frames)
        out = args.out or dataset_root
        if out is None:
            raise UsageError(f"--out is required for {path} (not a dataset root with JPEGImages/)")
        targets.append((sequences, out))
    names = {}
    for sequences, out in targets:
        for sequence in sequences:
            key = (os.path.abspath(out), sequence.name)
            if key in names:
                raise UsageError(f"{sequence.source} and {names[key]} both write sequence "
                                 f"{sequence.name!r} under {out}; give them different --out runs")
            names[key] = sequence.source

    if args.method == "raft":
        from oclr_jax.flow.weights import load_raft_variables

        variables, _ = load_raft_variables(args.raft_checkpoint, args.trust_pickle)
        estimator = run.RaftEstimator(variables, args.iters, args.corr, args.pairs_per_device)
    else:
        estimator = run.DisEstimator()

    planned = [(run.plan_jobs(sequences, args.gaps, out, estimator, args.overwrite), out)
               for sequences, out in targets]
    total = sum(len(job.pairs) for (jobs, _), _ in planned for job in jobs)
    skipped = sum(s for (_, s), _ in planned)
    written = 0
    with StopSignal() as stop, tqdm(total=total, desc=f"flow ({estimator.name})", unit="pair",
                                    disable=args.no_progress) as bar:
        for (jobs, _), out in planned:
            written += run.run_jobs(jobs, out, estimator, bar, stop)
    print(json.dumps({"method": estimator.name, "gaps": args.gaps, "written": written,
                      "skipped_existing": skipped,
                      "sequences": sum(len(s) for s, _ in targets),
                      "out": sorted({os.path.abspath(o) for _, o in targets})}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
