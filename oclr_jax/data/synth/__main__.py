"""Command line of the synthetic data generator.

  python -m oclr_jax.data.synth generate --split syn_train --out data/syn_train --workers 2
  python -m oclr_jax.data.synth show data/syn_train --seq 2_00017 --out sheet.png
  python -m oclr_jax.data.synth plan --split syn_train
"""

from __future__ import annotations

import argparse
import json
import sys

from oclr_jax.data.synth.plan import SPLITS, composition_counts, plan_split
from oclr_jax.data.synth.scene import FLOW_MODES, RenderOptions
from oclr_jax.errors import UserError, run_cli


def _resolution(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution must look like 128x224 (HxW), got {text!r}") from None
    return height, width


def _add_generate(commands) -> None:
    parser = commands.add_parser(
        "generate", help="render a split into the official OCLR layout",
        description="Renders a synthetic split (paper Table B5) into JPEGImages/, Flows_gap1/, "
                    "Flows_gap-1/, AmodalAnnotations/, Annotations/ and Metadata/ of --out. "
                    "Resumable: completed sequences are skipped.")
    parser.add_argument("--split", required=True, choices=sorted(SPLITS))
    parser.add_argument("--out", required=True, help="output folder of the split")
    parser.add_argument("--num-sequences", type=int, default=None,
                        help="sequences in the split (default: the Table B5 size: "
                             + ", ".join(f"{k} {v.num_sequences}" for k, v in SPLITS.items()) + ")")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--resolution", type=_resolution, default=(128, 224), help="HxW (default 128x224)")
    parser.add_argument("--frames", type=int, default=30, help="frames per sequence (default 30)")
    parser.add_argument("--render-scale", type=float, default=1.0,
                        help="render RGB at this multiple of the resolution, then area-downsample")
    parser.add_argument("--flow", choices=FLOW_MODES, default="gt",
                        help="gt: exact flow of the visible surface; dis: OpenCV DIS estimate on the RGB")
    parser.add_argument("--texture-dir", help="folder of texture images (e.g. PASS); default procedural")
    parser.add_argument("--silhouette-dir", help="folder of binary object masks (e.g. YouTube-VOS "
                                                 "annotations); default procedural shapes")
    parser.add_argument("--background-video-dir", help="folder of videos or frame folders for the "
                                                       "real-video backgrounds; default procedural non-rigid motion")
    parser.add_argument("--flow-images", action="store_true", help="also write FlowImages_gap±1/ colour-wheel PNGs")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard", default="0/1", help="k/n: generate only indices i with i %% n == k")
    parser.add_argument("--no-resume", action="store_true", help="rewrite sequences that are already complete")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_show(commands) -> None:
    parser = commands.add_parser("show", help="draw a contact sheet of one generated sequence",
                                 description="RGB, flow (colour wheel), amodal layers and modal composition.")
    parser.add_argument("split_dir", help="a folder written by `generate`")
    parser.add_argument("--seq", help="sequence folder name (default: the first one)")
    parser.add_argument("--out", required=True, help="image to write, e.g. sheet.png")
    parser.add_argument("--frames", type=int, default=6, help="rows (frames) to show (default 6)")


def _add_plan(commands) -> None:
    parser = commands.add_parser("plan", help="print a split's composition (no rendering)")
    parser.add_argument("--split", required=True, choices=sorted(SPLITS))
    parser.add_argument("--num-sequences", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)


def _generate(args) -> int:
    from oclr_jax.data.synth.generate import SequenceGenerationError, generate, parse_shard

    options = RenderOptions(resolution=args.resolution, frames=args.frames, render_scale=args.render_scale,
                            flow_mode=args.flow, texture_dir=args.texture_dir,
                            silhouette_dir=args.silhouette_dir, background_video_dir=args.background_video_dir)
    try:
        summary = generate(args.split, args.out, num_sequences=args.num_sequences, seed=args.seed,
                           options=options, workers=args.workers, shard=parse_shard(args.shard),
                           resume=not args.no_resume, flow_images=args.flow_images,
                           progress=not args.quiet)
    except SequenceGenerationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"split": summary.split, "out": summary.out_dir, "shard": list(summary.shard),
                      "planned": summary.planned, "skipped": summary.skipped,
                      "written": summary.written, "seconds": round(summary.seconds, 2),
                      "sequences_per_second": round(summary.sequences_per_second, 3)}))
    return 0


def _show(args) -> int:
    from oclr_jax.data.synth.contact_sheet import contact_sheet, save_image
    from oclr_jax.data.synth.reader import list_sequences, read_sequence

    name = args.seq
    if name is None:
        names = list_sequences(args.split_dir)
        if not names:
            print(f"error: {args.split_dir} holds no complete sequence", file=sys.stderr)
            return 1
        name = names[0]
    save_image(args.out, contact_sheet(read_sequence(args.split_dir, name), args.frames))
    print(f"wrote {args.out} ({name})")
    return 0


def _plan(args) -> int:
    specs = plan_split(args.split, args.num_sequences, args.seed)
    print(json.dumps({"split": args.split, "sequences": len(specs), **composition_counts(specs)}, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m oclr_jax.data.synth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_generate(commands)
    _add_show(commands)
    _add_plan(commands)
    args = parser.parse_args(argv)
    try:
        return {"generate": _generate, "show": _show, "plan": _plan}[args.command](args)
    except (ValueError, FileNotFoundError, UserError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run_cli(main))
