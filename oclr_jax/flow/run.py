"""Computing and writing the flow files of whole sequences: estimators and the resumable loop.

Contract: every output file is `Flows_gap{G}/<seq>/<frame>.flo` under the output root (see
`oclr_jax.flow.frames`), holds the flow of the two frames padded as RAFT's `InputPadder`
('sintel' mode) pads them, at that padded size, and is written atomically.  A file that already
exists with the expected size is skipped, so an interrupted job resumes where it stopped; a file
of another size is an error (or replaced with `overwrite`).  Nothing else in the output root is
touched.  A non-finite flow is an error, never a file.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional, Sequence

import numpy as np

from oclr_jax.data.flow_io import write_flo
from oclr_jax.errors import UserError
from oclr_jax.flow import padding
from oclr_jax.flow.frames import FrameSequence, FramesError, output_path, plan_pairs

_FLO_HEADER_BYTES = 12


class FlowRunError(UserError, ValueError):
    """The job cannot go on (existing files in the way, a non-finite flow); the message says why."""


class RaftEstimator:
    """RAFT on batches of padded frame pairs, sharded over the local devices.

    Each call takes `n <= batch_size` pairs; the batch is rounded up to a multiple of the
    device count (the extra rows repeat the last pair and are dropped), so a call compiles once
    per (frame size, rounded batch).
    """

    name = "raft"

    def __init__(self, variables, iters: int = 20, corr_impl: str = "all_pairs",
                 pairs_per_device: int = 4, devices=None):
        import jax

        from oclr_jax.flow.raft import RAFT, estimate_flow
        from oclr_jax.sharding import batch_sharded, make_data_mesh, replicated

        self.mesh = make_data_mesh(devices if devices is not None else jax.local_devices())
        self.num_devices = self.mesh.devices.size
        self.batch_size = pairs_per_device * self.num_devices
        self.iters, self.corr_impl = iters, corr_impl
        self._batch_sharding = batch_sharded(self.mesh)
        self.variables = jax.device_put(variables, replicated(self.mesh))
        model = RAFT()
        self._fn = jax.jit(lambda v, a, b: estimate_flow(model, v, a, b, iters, corr_impl)["flow_up"],
                           out_shardings=self._batch_sharding)

    def check_size(self, height: int, width: int) -> Optional[str]:
        return padding.check_size(height, width)

    def __call__(self, images1: np.ndarray, images2: np.ndarray) -> np.ndarray:
        """(n, H, W, 3) uint8 padded frames -> (n, H, W, 2) float32 flows."""
        import jax

        n = len(images1)
        rows = -(-n // self.num_devices) * self.num_devices
        index = np.minimum(np.arange(rows), n - 1)
        put = lambda x: jax.device_put(np.asarray(x[index], np.float32), self._batch_sharding)
        return np.asarray(self._fn(self.variables, put(images1), put(images2)))[:n]


class DisEstimator:
    """OpenCV DIS (medium preset) on grey frames, one pair at a time: the fallback without weights.
    The same call as the synthetic generator's background flow (`estimate_flows`)."""

    name = "dis"
    batch_size = 8

    def check_size(self, height: int, width: int) -> Optional[str]:
        return None

    def __call__(self, images1: np.ndarray, images2: np.ndarray) -> np.ndarray:
        from oclr_jax.data.synth.backgrounds import estimate_flows

        return np.stack([estimate_flows(np.stack([a, b]))[0][0] for a, b in zip(images1, images2)])


@dataclasses.dataclass
class Job:
    """Pairs still to compute for one sequence, and the padding of its frames."""

    sequence: FrameSequence
    pairs: list
    pads: tuple


def _expected_bytes(height: int, width: int) -> int:
    return _FLO_HEADER_BYTES + height * width * 2 * 4


def plan_jobs(sequences: Sequence[FrameSequence], gaps: Sequence[int], out_root: str, estimator,
              overwrite: bool = False) -> tuple[list, int]:
    """(jobs with the pairs to compute, number of pairs skipped as already done).  Checks every
    sequence first, so a bad input fails before anything is written."""
    jobs, skipped = [], 0
    for sequence in sequences:
        problem = estimator.check_size(*sequence.size)
        if problem:
            raise FramesError(f"{sequence.source}: {problem}")
    for sequence in sequences:
        pads = padding.sintel_padding(*sequence.size)
        expected = _expected_bytes(*padding.padded_size(*sequence.size))
        todo = []
        for pair in plan_pairs(sequence.name, sequence.frame_names, gaps):
            path = output_path(out_root, pair)
            if os.path.exists(path) and not overwrite:
                if os.path.getsize(path) != expected:
                    raise FlowRunError(f"{path}: exists with {os.path.getsize(path)} bytes, not the {expected} "
                                       f"of a {padding.padded_size(*sequence.size)} flow; it was not written by "
                                       "this job. Remove it, choose another --out, or pass --overwrite")
                skipped += 1
                continue
            todo.append(pair)
        if todo:
            jobs.append(Job(sequence, todo, pads))
    return jobs, skipped


def run_jobs(jobs: Sequence[Job], out_root: str, estimator, progress=None, stop=None) -> int:
    """Computes and writes every pair of `jobs`; returns the number of files written.  With a
    `StopSignal`, stops between batches once it is set (every written file is complete, so the
    same command resumes)."""
    written = 0
    for job in jobs:
        cache: dict[int, np.ndarray] = {}
        max_gap = max(abs(p.gap) for p in job.pairs)

        def frame(index, cache=cache, job=job):  # this job's frames, each read once
            if index not in cache:
                cache[index] = padding.pad_images(job.sequence.read(index), *job.pads)
            return cache[index]

        for start in range(0, len(job.pairs), estimator.batch_size):
            if stop is not None and stop.is_set():
                print(f"stopping: {written} flow files written in this run; rerun the same command to "
                      "resume", file=sys.stderr)
                stop.raise_if_set()
            chunk = job.pairs[start:start + estimator.batch_size]
            images1 = np.stack([frame(p.first) for p in chunk])
            images2 = np.stack([frame(p.second) for p in chunk])
            flows = estimator(images1, images2)
            for pair, flow in zip(chunk, flows):
                path = output_path(out_root, pair)
                if not np.isfinite(flow).all():
                    raise FlowRunError(f"{path}: the {estimator.name} flow of {job.sequence.source} frames "
                                       f"{pair.first} -> {pair.second} is not finite; nothing written for it")
                write_flo(path, flow)
                written += 1
            if progress is not None:
                progress.update(len(chunk))
            # Pairs come ordered by their later frame: older frames are not needed again.
            newest = max(max(p.first, p.second) for p in chunk)
            for index in [i for i in cache if i < newest - max_gap]:
                del cache[index]
    return written
