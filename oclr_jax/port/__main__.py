"""Checkpoints both ways between oclr-jax and the official PyTorch OCLR.

  python -m oclr_jax.port from-torch CKPT.pth OUT_DIR
  python -m oclr_jax.port to-torch CKPT_DIR OUT.pth

See docs/port.md.  Exit status 0 on success, 2 on a bad checkpoint or argument (the message
lists what is wrong; nothing is written).
"""

from __future__ import annotations

import argparse
import sys

from oclr_jax.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m oclr_jax.port", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    from_torch = commands.add_parser(
        "from-torch", help="official PyTorch .pth -> oclr-jax checkpoint folder",
        description="Converts an official OCLR PyTorch checkpoint (a bare state_dict or the "
                    "training checkpoint with 'model_state_dict') into an oclr-jax checkpoint "
                    "folder. The model sizes (input channels, U-Net features, queries, layers, "
                    "heads, feed-forward width) are inferred from the tensors and printed.")
    from_torch.add_argument("checkpoint", metavar="CKPT.pth", help="PyTorch checkpoint file")
    from_torch.add_argument("out_dir", metavar="OUT_DIR", help="oclr-jax checkpoint folder to create")
    from_torch.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    from_torch.add_argument("--trust-pickle", action="store_true",
                            help="load with torch.load(weights_only=False); only for trusted files "
                                 "that hold pickled Python objects besides tensors")

    to_torch = commands.add_parser(
        "to-torch", help="oclr-jax checkpoint folder -> PyTorch .pth",
        description="Exports an oclr-jax checkpoint (a folder written by save_checkpoint, or a "
                    "training workdir) to a .pth that the official OCLR class loads with "
                    "load_state_dict(strict=True).")
    to_torch.add_argument("checkpoint", metavar="CKPT_DIR", help="oclr-jax checkpoint folder or workdir")
    to_torch.add_argument("out_path", metavar="OUT.pth", help="PyTorch file to create")
    to_torch.add_argument("--overwrite", action="store_true", help="replace OUT.pth if it exists")
    to_torch.add_argument("--bare", action="store_true",
                          help="write the bare state_dict instead of {'model_state_dict': ...} "
                               "(the layout the official eval.py --resume_path reads)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from oclr_jax.errors import UserError
    from oclr_jax.port import commands

    try:
        if args.command == "from-torch":
            report = commands.from_torch(args.checkpoint, args.out_dir, overwrite=args.overwrite,
                                         trust_pickle=args.trust_pickle)
        else:
            report = commands.to_torch(args.checkpoint, args.out_path, overwrite=args.overwrite,
                                       wrap=not args.bare)
    except UserError as error:  # PortError, CheckpointError, an output folder refused
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
