"""Background ``nextbest train`` jobs of ``POST /predictors``: one subprocess at a time per
worker, each job's record kept as a JSON file so a restarted worker still answers for it."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from agents.runtime.app import NextbestApp
from agents.web.errors import ApiError
from models.next_purchase.paths import merchant_model_root
from schemas.keys import iso

log = logging.getLogger(__name__)
MAX_JOBS_KEPT = 100
JOB_SUFFIX = re.compile(r"[0-9a-f]{12}")  # a job id is "<merchant>.<12 hex digits>"


@dataclass
class Job:
    job: str
    merchant: str
    status: str  # queued | running | succeeded | failed
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    artifact: str | None = None
    metrics: dict | None = None
    error: str | None = None


class Trainer:
    """Runs ``nextbest train`` for a merchant in a subprocess, one job at a time per worker.

    Job records are JSON files under ``<state_dir>/predictor-jobs`` so a restarted worker still
    answers for them (a job that was running when its worker stopped is reported as failed).
    """

    def __init__(self, nb: NextbestApp) -> None:
        self.nb = nb
        self.folder = Path(nb.settings.state_dir) / "predictor-jobs"
        self.jobs: dict[str, Job] = {}
        self._slot = asyncio.Semaphore(1)
        self._tasks: set[asyncio.Task] = set()
        self._processes: set[asyncio.subprocess.Process] = set()

    def stop(self) -> None:
        """Terminate running jobs (the worker is stopping): they are reported as failed."""
        for process in list(self._processes):
            if process.returncode is None:
                process.terminate()

    def _save(self, job: Job) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{job.job}.json").write_bytes(orjson.dumps(asdict(job)))

    def get(self, job_id: str) -> Job | None:
        job = self.jobs.get(job_id)
        path = self.folder / f"{job_id}.json"
        if job is None and path.is_file():
            job = Job(**orjson.loads(path.read_bytes()))
            if job.status in ("queued", "running"):  # its worker stopped before it finished
                job.status, job.error = "failed", "interrupted: the worker stopped"
        return job

    def start(self, merchant_id: str) -> Job:
        merchant = self.nb.registry.get(merchant_id)
        data = merchant.options.training.data if merchant else ""
        if not data:
            raise ApiError(
                422,
                f"merchant {merchant_id!r} has no training data configured "
                "(training.data in the merchants file)",
            )
        if not Path(data).is_file():
            raise ApiError(422, f"training data for {merchant_id!r} not found on this worker")
        running = [
            j
            for j in self.jobs.values()
            if j.merchant == merchant_id and j.status in ("queued", "running")
        ]
        if running:
            raise ApiError(409, "a job for this merchant is already running", job=running[0].job)
        job = Job(f"{merchant_id}.{secrets.token_hex(6)}", merchant_id, "queued", iso(time.time()))
        self.jobs[job.job] = job
        self._save(job)
        task = asyncio.ensure_future(self._run(job, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        for old in list(self.jobs)[:-MAX_JOBS_KEPT]:  # the files keep the history
            self.jobs.pop(old)
        return job

    def command(self, job: Job, data: str) -> list[str]:
        """``nextbest train`` on the merchant's training file, format and product rule, run as
        its module (the web layer calls no tool)."""
        out = merchant_model_root(self.nb.settings.models_dir, job.merchant)
        extra = shlex.split(self.nb.settings.train_args)
        options = self.nb.registry.get(job.merchant).options
        source = "--interactions" if options.training.format == "interactions" else "--data"
        rule = ["--product-pattern", options.product_pattern] if options.product_pattern else []
        return [
            sys.executable,
            "-m",
            "models.next_purchase.train",
            source,
            data,
            *rule,
            "--out",
            str(out),
            *extra,
        ]

    async def _run(self, job: Job, data: str) -> None:
        async with self._slot:
            job.status, job.started_at = "running", iso(time.time())
            self._save(job)
            log_path = self.folder / f"{job.job}.log"
            try:
                with log_path.open("wb") as log_file:
                    process = await asyncio.create_subprocess_exec(
                        *self.command(job, data), stdout=asyncio.subprocess.PIPE, stderr=log_file
                    )
                    self._processes.add(process)
                    try:
                        stdout, _ = await process.communicate()
                    finally:
                        self._processes.discard(process)
                log_file_tail = log_path.read_text(errors="replace")[-500:]
                result = self._result(stdout)
                if process.returncode != 0 or result is None:
                    job.status = "failed"
                    job.error = f"exit code {process.returncode}: {log_file_tail.strip()}"
                else:
                    job.status, job.artifact, job.metrics = "succeeded", *result
            except Exception as exc:  # the job fails, the worker does not
                log.exception("predictor job %s failed to run", job.job)
                job.status, job.error = "failed", repr(exc)
            job.finished_at = iso(time.time())
            self._save(job)
            log.warning("predictor job %s for %s: %s", job.job, job.merchant, job.status)

    @staticmethod
    def _result(stdout: bytes) -> tuple[str, dict] | None:
        """(artifact path, metrics summary) from train's last output line and metrics.json."""
        lines = [line for line in stdout.decode(errors="replace").splitlines() if line.strip()]
        try:
            artifact = orjson.loads(lines[-1])["artifact"]
            metrics = orjson.loads((Path(artifact) / "metrics.json").read_bytes())
        except (IndexError, KeyError, TypeError, OSError, orjson.JSONDecodeError):
            return None
        summary = {
            k: metrics.get(k)
            for k in ("examples_train", "examples_val", "best_epoch", "epochs_run", "seconds")
        }
        validation = metrics.get("validation") or {}
        summary["validation"] = {k: v for k, v in validation.items() if k != "epoch"}
        return artifact, summary
