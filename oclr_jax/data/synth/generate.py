"""Generating a whole split: workers, shards, resume, progress and clear failures.

Sequence `i` of a split is a pure function of `(split, seed, i)` and the render options, so
`--shard k/n` (the indices `i % n == k`) on n machines writes exactly the files of a
single-machine run.  A run first records its settings in `<out>/synth_manifest.json`; a later
run into the same folder with different settings is refused instead of silently mixing two
datasets.  Completed sequences (metadata JSON present) are skipped unless `resume=False`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import time
import traceback

from tqdm import tqdm

from oclr_jax.atomic import atomic_write_text
from oclr_jax.data.synth.plan import SPLITS, spec_for_index
from oclr_jax.data.synth.render import GENERATOR_VERSION, render_sequence
from oclr_jax.data.synth.scene import RenderOptions
from oclr_jax.data.synth.writer import TEMP_FOLDER, SequenceWriter, is_complete, remove_stale_staging
from oclr_jax.errors import check_output_dir

MANIFEST = "synth_manifest.json"


class SequenceGenerationError(RuntimeError):
    """Rendering or writing one sequence failed; the message names its index and seed."""


@dataclasses.dataclass(frozen=True)
class _Job:
    split: str
    seed: int
    out_dir: str
    options: RenderOptions
    flow_images: bool


@dataclasses.dataclass
class GenerateSummary:
    split: str
    out_dir: str
    shard: tuple[int, int]
    planned: int  # sequences of this shard
    skipped: int  # already complete
    written: int
    seconds: float

    @property
    def sequences_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def parse_shard(text: str) -> tuple[int, int]:
    """'k/n' -> (k, n) with 0 <= k < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like k/n (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text}: need 0 <= k < n")
    return index, count


def manifest(split: str, seed: int, options: RenderOptions, flow_images: bool) -> dict:
    """Everything besides the index that decides a sequence's files."""
    return {"generator_version": GENERATOR_VERSION, "split": split, "seed": seed,
            "options": options.to_dict(), "flow_images": flow_images}


def check_asset_folders(options: RenderOptions) -> None:
    """Raises (naming the flag) if a user asset folder is missing or holds no usable file."""
    from oclr_jax.data.synth.assets import list_images, list_videos

    for flag, folder, lister in (("--texture-dir", options.texture_dir, list_images),
                                 ("--silhouette-dir", options.silhouette_dir, list_images),
                                 ("--background-video-dir", options.background_video_dir,
                                  list_videos)):
        if folder is None:
            continue
        try:
            lister(folder)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"{flag}: {e}") from None


def _holds_sequences(out_dir: str) -> bool:
    """Whether a generator folder holds any written sequence (complete or staged)."""
    for sub in ("Metadata", "JPEGImages", TEMP_FOLDER):
        folder = os.path.join(out_dir, sub)
        if os.path.isdir(folder) and os.listdir(folder):
            return True
    return False


def check_manifest(out_dir: str, expected: dict) -> None:
    """Writes the manifest, or raises if the folder holds a dataset made differently.

    A folder that is not ours (a file, files but no manifest, an unwritable place) is refused
    with a UserError (`errors.check_output_dir`): the generator never writes into a folder it
    did not make.  A manifest with no sequence beside it (a run that stopped before writing
    any) is replaced; one with other settings raises ValueError.
    """
    # Added to, never replaced (resume): `--out .` in a folder of ours is fine.
    check_output_dir(out_dir, "--out", MANIFEST, replaces=False)
    path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(path):
        try:
            with open(path) as f:
                found = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: unreadable manifest ({e}); use another --out") from None
        if found != expected and not _holds_sequences(out_dir):
            found = expected  # nothing made with the old settings: take the new ones.
            os.remove(path)
        if found != expected:
            keys = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
            raise ValueError(f"{path} was written with different settings ({', '.join(keys)}): "
                             f"found {json.dumps({k: found.get(k) for k in keys})}, now "
                             f"{json.dumps({k: expected.get(k) for k in keys})}; use another --out")
        if os.path.exists(path):
            return
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out_dir}: cannot create the folder ({e.strerror})") from None
    atomic_write_text(path, json.dumps(expected, indent=1, sort_keys=True))


def _run(job: _Job, writer: SequenceWriter, index: int) -> str:
    spec = spec_for_index(job.split, job.seed, index)
    try:
        return writer.write(render_sequence(spec, job.options))
    except Exception as e:  # noqa: BLE001 - re-raised with the sequence's identity
        raise SequenceGenerationError(
            f"sequence index {index} ({spec.name}) of split {job.split} with seed {job.seed} "
            f"failed: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None


_worker_job: _Job | None = None
_worker_writer: SequenceWriter | None = None


def _exit_with_parent(parent_pid: int, poll_seconds: float = 0.5) -> None:
    """Ends this worker when the parent process is gone, whatever signal ended it.

    A worker blocked on the executor's queue would otherwise wait forever once its parent is
    killed (SIGTERM without cleanup, SIGKILL, a crash); Linux re-parents it, which this sees.
    """
    import threading

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)  # noqa: SLF001 - no cleanup to run: the parent's next run clears staging.

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(job: _Job, parent_pid: int | None = None) -> None:
    import signal

    import cv2  # one OpenCV thread per worker: the workers are the parallelism

    # Ctrl-C reaches the whole process group: the parent decides how to stop, the workers
    # must not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    cv2.setNumThreads(1)
    global _worker_job, _worker_writer
    _worker_job = job
    # Never closed: the parent removes the staging folders of its finished workers.
    _worker_writer = SequenceWriter(job.out_dir, job.flow_images)


def _run_in_worker(index: int) -> str:
    return _run(_worker_job, _worker_writer, index)


def generate(split: str, out_dir: str, *, num_sequences: int | None = None, seed: int = 0,
             options: RenderOptions | None = None, workers: int = 1,
             shard: tuple[int, int] = (0, 1), resume: bool = True, flow_images: bool = False,
             progress: bool = True) -> GenerateSummary:
    """Renders and writes the sequences of one shard of a split (see the module docstring).

    Args:
      num_sequences: size of the split (default: its Table B5 size).
      workers: processes; 1 renders in this process.
      shard: `(k, n)`: this call does the indices `i` with `i % n == k`.
    Raises:
      SequenceGenerationError: naming the index and seed of the first sequence that failed.
      UserError: `out_dir` is not a folder the generator may write (`check_manifest`).
      ValueError: a bad argument, or `out_dir` holds a split made with other settings.
    """
    options = options or RenderOptions()
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    total = SPLITS[split].num_sequences if num_sequences is None else num_sequences
    shard_index, shard_count = shard
    if total < 1:
        raise ValueError(f"--num-sequences must be at least 1, got {total}")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    # Inputs first: a manifest recorded before a typo in an asset folder surfaced would make
    # the corrected rerun look like a different dataset and be refused.
    check_asset_folders(options)
    check_manifest(out_dir, manifest(split, seed, options, flow_images))
    indices = list(range(shard_index, total, shard_count))
    names = {i: spec_for_index(split, seed, i).name for i in indices}
    todo = [i for i in indices if not (resume and is_complete(out_dir, names[i]))]
    remove_stale_staging(out_dir, {names[i] for i in todo})
    job = _Job(split, seed, out_dir, options, flow_images)
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="seq", disable=not progress, dynamic_ncols=True,
               desc=f"{split} shard {shard_index}/{shard_count}")
    bar.set_postfix(skipped=len(indices) - len(todo))
    try:
        if workers <= 1:
            with SequenceWriter(out_dir, flow_images) as writer:
                for index in todo:
                    _run(job, writer, index)
                    bar.update()
        elif todo:
            _generate_in_pool(job, todo, workers, bar)
    finally:
        bar.close()
        remove_stale_staging(out_dir, set())  # the finished workers' staging folders
    temp_dir = os.path.join(out_dir, TEMP_FOLDER)
    if os.path.isdir(temp_dir) and not os.listdir(temp_dir):
        os.rmdir(temp_dir)
    return GenerateSummary(split, out_dir, shard, len(indices), len(indices) - len(todo), len(todo),
                           time.perf_counter() - start)


def _generate_in_pool(job: _Job, todo: list[int], workers: int, bar: tqdm) -> None:
    # Fresh interpreters ('spawn'): forking a process that already runs JAX or TensorFlow
    # threads is unsafe.  One BLAS thread per worker, set before the workers import numpy
    # (they start while the tasks are submitted).  An executor rather than a Pool: when the
    # system kills a worker (e.g. out of memory) a Pool waits forever for its task.
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    executor = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(job, os.getpid()))
    futures = {}
    try:
        try:
            for index in todo:
                futures[executor.submit(_run_in_worker, index)] = index
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        for future in concurrent.futures.as_completed(futures):
            future.result()  # a SequenceGenerationError from the worker names its sequence
            bar.update()
    except concurrent.futures.process.BrokenProcessPool:
        unfinished = [index for future, index in futures.items() if future.exception() is not None]
        raise SequenceGenerationError(
            f"a worker process died (killed by the system, e.g. for lack of memory?) while rendering one "
            f"of the sequences with indices {unfinished[:workers + 1]} of split {job.split} with seed "
            f"{job.seed}") from None
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM through run_cli) or failed: stop the workers now rather
        # than waiting for their sequences; their staging folders are cleared by the caller and
        # the finished sequences are kept, so a rerun resumes.
        for process in list((executor._processes or {}).values()):  # noqa: SLF001
            process.terminate()
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    else:
        executor.shutdown(wait=True, cancel_futures=True)
