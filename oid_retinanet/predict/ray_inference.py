"""Stage 4 on a Ray cluster (`--ray [ADDRESS]`): the images without a cache file are split into chunks, and a pool
of Ray actors, each holding one replica of the model, runs the plain run's `predict_images` on them, writing the
same atomic per-image cache files into the cache folder (on a filesystem every worker sees); the driver then
writes the CSV from the cache as the plain run does, so the outputs are the same files.

A worker that dies (preempted, killed, out of memory) is restarted by Ray and its chunk retried; what it had
cached stays, so a retry or a rerun predicts only what is missing. Ray is optional: requirements-cluster.txt.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
from pathlib import Path

from tqdm import tqdm

from oid_retinanet.errors import OIDInputError
from oid_retinanet.predict.cache import cache_file
from oid_retinanet.predict.inference import InferenceReport, image_id, predict_images, write_failures

log = logging.getLogger(__name__)

RAY_INSTALL = "pip install -r requirements-cluster.txt"
CHUNK = 32  # images per task: small enough that a lost worker costs little, large enough to keep batches full


def require_ray() -> None:
    """OIDInputError naming the install command when Ray is missing (checked before any model loads)."""
    if importlib.util.find_spec("ray") is None:
        raise OIDInputError(f"--ray needs the ray package: {RAY_INSTALL}")


class Predictor:
    """One model replica in a Ray actor: loads the model once, then predicts chunks of images into the cache."""

    def __init__(self, resolved, cache_dir: str, flip: bool, batch_size: int, threads: int) -> None:
        from oid_retinanet.cli import tune_allocator

        tune_allocator()
        if threads:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        self.model = resolved.load()
        self.settings = (cache_dir, *resolved.sides)
        self.flip, self.batch_size = flip, batch_size

    def predict(self, paths: list[str]) -> tuple[int, list[tuple[str, str]]]:
        """(images predicted, unreadable ones with the reason) of one chunk."""
        cache_dir, min_side, max_side = self.settings
        report = predict_images(self.model, paths, cache_dir, min_side, max_side, flip=self.flip,
                                batch_size=self.batch_size, workers=1, progress=False, failures_file=False)
        return report.predicted, report.failures


def predict_on_ray(resolved, paths, cache_dir: str | os.PathLike, flip: bool, batch_size: int = 1,
                   address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1,
                   gpus_per_worker: float = 0, chunk: int = CHUNK, progress: bool | None = None) -> InferenceReport:
    """Predict `paths` into `cache_dir` with `workers` model replicas on the Ray cluster at `address` (None: a
    local one, started here and stopped at the end; "auto": the running cluster this machine belongs to).

    The cache folder's settings and class list must already be recorded (as `stages.inference.predict_to_cache`
    does). workers: default as many as the cluster's CPUs (GPUs with gpus_per_worker) allow."""
    require_ray()
    import ray
    from ray.util import ActorPool

    cache_dir = Path(cache_dir)
    paths = [Path(p) for p in paths]
    todo = [p for p in paths if not cache_file(cache_dir, image_id(p)).exists()]
    report = InferenceReport(images=len(paths), cached_before=len(paths) - len(todo))
    started = not ray.is_initialized()
    if started:
        # every node needs this project installed (its workers import the package); they get the driver's backend
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}})
    try:
        resources = ray.cluster_resources()
        if workers is None:
            kind, each = ("GPU", gpus_per_worker) if gpus_per_worker else ("CPU", cpus_per_worker)
            workers = max(1, int(resources.get(kind, 1) // each))
        log.info("Ray: %d images, %d already cached, %d to predict by %d workers (%s CPU, %s GPU each) of a "
                 "cluster with %s", len(paths), report.cached_before, len(todo), workers, cpus_per_worker,
                 gpus_per_worker, {k: v for k, v in resources.items() if k in ("CPU", "GPU")})
        if not todo:
            write_failures(cache_dir, [])
            return report
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1,
                           max_task_retries=-1)(Predictor)
        light = dataclasses.replace(resolved, _loaded=None)  # the actors load the model themselves
        threads = int(cpus_per_worker) if not gpus_per_worker else 0
        pool = ActorPool([actor.remote(light, str(cache_dir), flip, batch_size, threads)
                          for _ in range(min(workers, len(todo)))])
        chunks = [[str(p) for p in todo[i:i + chunk]] for i in range(0, len(todo), chunk)]
        order = {str(p): k for k, p in enumerate(todo)}
        with tqdm(total=len(todo), unit="img", desc="predicting (ray)",
                  disable=None if progress is None else not progress) as bar:
            for predicted, failures in pool.map_unordered(lambda a, c: a.predict.remote(c), chunks):
                report.predicted += predicted
                report.failures.extend(failures)
                bar.update(predicted + len(failures))
        report.failures.sort(key=lambda item: order[item[0]])  # the plain run's order
        write_failures(cache_dir, report.failures)
    finally:
        if started:
            ray.shutdown()
    log.info("%s", report.line())
    return report
