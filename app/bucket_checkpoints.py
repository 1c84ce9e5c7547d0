"""Checkpoints that outlive the machine: mirror output_dir's complete checkpoints to Cloud Storage.

Set CHECKPOINT_BUCKET=gs://BUCKET/PATH (launch_training.sh --checkpoint-bucket does). This module
depends on trainkit, never the other way round: trainkit imports it by name when that variable is
set (trainkit.EXTENSIONS) and calls `plug_in()`, which plugs it into trainkit's hook points:
- at once, before anything is read or written: a bad bucket name, missing credentials, a
  bucket that does not exist or cannot be reached each end the program as one line
  (trainkit.UserError, exit 2);
- trainkit.CALLBACKS, before resuming: when output_dir holds no complete checkpoint, or only
  older ones than the bucket, the bucket's newest complete checkpoint is downloaded (its
  marker last) and training resumes from it. Then a callback (BucketSync) uploads every
  complete checkpoint in a background thread: the training steps never wait for it. Its
  `on_train_end` waits for the uploads in flight (also after SIGTERM);
- trainkit.ON_FINISH: `finish(trainer)` uploads the final model and results (output_dir's
  other files).

Any other transformers.Trainer: `attach(trainer, "gs://BUCKET/PATH")` checks the bucket,
restores, and adds the same callback; call `finish(trainer)` after training. Only checkpoints
that carry trainkit's marker are uploaded: something in the process must write it (trainkit's
Preemption callback does, after every save).

The protocol is trainkit's: a checkpoint is complete when its marker (trainkit.COMPLETE_MARKER)
exists. In the bucket the marker is uploaded last, and deleted first; a download writes it
last; nothing is renamed. A kill mid-upload therefore leaves a checkpoint without marker,
which counts as absent: the previous complete one stays the one to resume from. A kill
mid-download leaves a local folder without marker, which the next start downloads again.
Rotation (save_total_limit) keeps exactly the newest N complete checkpoints in the bucket and
deletes every other one.

Layout: gs://BUCKET/PATH mirrors output_dir: PATH/checkpoint-N/... and, at the end, the
final model, results and logs under PATH/.

Credentials: Application Default Credentials through google-cloud-storage (on a VM, its
service account; elsewhere `gcloud auth application-default login`). With
STORAGE_EMULATOR_HOST set the client talks to that emulator, anonymously.

Settings: HFGPU_BUCKET_TIMEOUT=SECONDS (default 60) bounds the start-up check's retries.
Every request retries as google-cloud-storage's DEFAULT_RETRY does (see RETRY below).
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import queue
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trainkit
from transformers import TrainerCallback

ENV = "CHECKPOINT_BUCKET"
STAGING_DIR = ".bucket-uploads"  # hard-linked snapshots of checkpoints waiting for upload
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*[a-z0-9]$")
_EXAMPLE = "e.g. gs://my-team-checkpoints/bert-run1"

log = logging.getLogger("trainkit.bucket")


@dataclass(frozen=True)
class BucketUrl:
    """gs://BUCKET/PATH, split and checked against Cloud Storage's naming rules."""

    bucket: str
    path: str  # no leading or trailing slash; may be empty

    def __str__(self) -> str:
        return f"gs://{self.bucket}/{self.path}" if self.path else f"gs://{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.path, *parts) if p)


def parse_url(url: str) -> BucketUrl:
    """Check URL (gs://BUCKET[/PATH]); a trainkit.UserError names the rule it breaks and the fix."""
    where = f"{ENV}={url}" if url.isprintable() and " " not in url else f"{ENV}={url!r}"
    if not url.startswith("gs://"):
        raise trainkit.UserError(f"{where} is not a Cloud Storage URL: write gs://BUCKET/PATH ({_EXAMPLE})")
    bucket, _, path = url[len("gs://") :].partition("/")
    path = path.strip("/")
    rule = _bucket_name_problem(bucket)
    if rule:
        raise trainkit.UserError(
            f"{where}: bucket name {bucket!r} {rule} (Cloud Storage naming rules; {_EXAMPLE})"
        )
    if any(part in {".", ".."} for part in path.split("/")) or any(c in path for c in "\r\n#[]*?"):
        raise trainkit.UserError(
            f"{where}: path {path!r} may not hold '.' or '..' segments, newlines or any of # [ ] * ?"
        )
    if len(path.encode()) > 900:
        raise trainkit.UserError(f"{where}: path is longer than 900 bytes; use a shorter one")
    return BucketUrl(bucket, path)


def _bucket_name_problem(name: str) -> str | None:
    """What breaks https://cloud.google.com/storage/docs/buckets#naming in NAME, or None."""
    if not name:
        return "is empty"
    if name != name.lower():
        return "has uppercase letters; use lowercase"
    if not re.fullmatch(r"[a-z0-9._-]+", name):
        return "may only hold lowercase letters, digits, '-', '_' and '.'"
    if not 3 <= len(name) <= (222 if "." in name else 63):
        return "must be 3-63 characters long"
    if not _BUCKET_RE.match(name):
        return "must start and end with a letter or digit"
    if "." in name and any(not 1 <= len(part) <= 63 for part in name.split(".")):
        return "has an empty or over-63-character part between dots"
    try:
        ipaddress.ip_address(name)
        return "may not be an IP address"
    except ValueError:
        pass
    if name.startswith("goog") or "google" in name or "g00gle" in name:
        return "may not start with 'goog' or contain 'google'"
    return None


# ---------------------------------------------------------------- the bucket


# How every request retries: google-cloud-storage's own DEFAULT_RETRY (google/cloud/storage/retry.py),
# which Google's retry strategy prescribes for the client libraries
# (https://cloud.google.com/storage/docs/retry-strategy#client-libraries): 408, 429 and 5xx answers,
# connection resets and timeouts, with exponential backoff. A plain api_core Retry() misses the
# upload and download answers the media layer raises as InvalidResponse (a 503 mid-upload fails at
# once). Uploads are only "conditionally idempotent" for Google; ours are safe to repeat: each
# object has one writer, and a repeat writes the same bytes (google-cloud-storage 3.x itself makes
# DEFAULT_RETRY the default of Blob.upload_from_filename).
def _retry():
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


class Bucket:
    """The checkpoint mirror at a BucketUrl, through Google's client library."""

    def __init__(self, url: BucketUrl):
        self.url = url
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from google.cloud import storage

            try:
                self._client = storage.Client()
            except OSError:  # credentials without a project: object calls need none
                self._client = storage.Client(project="_")
        return self._client

    def check(self, timeout: float) -> None:
        """List one object under PATH: proves the bucket exists, is reachable and readable."""
        import google.auth.exceptions
        from google.api_core import exceptions

        try:
            blobs = self.client.list_blobs(
                self.url.bucket,
                prefix=self.url.key() + "/" if self.url.path else None,
                max_results=1,
                retry=_retry().with_timeout(timeout),
                timeout=min(timeout, 30),
            )
            list(blobs)
        except google.auth.exceptions.DefaultCredentialsError:
            raise trainkit.UserError(
                f"{ENV}={self.url}: no Google credentials found; on a VM give it a service account, "
                "elsewhere run `gcloud auth application-default login`"
            ) from None
        except exceptions.NotFound:
            raise trainkit.UserError(
                f"{ENV}={self.url}: bucket {self.url.bucket} does not exist; create it "
                f"(gcloud storage buckets create gs://{self.url.bucket} --location REGION) or fix the name"
            ) from None
        except exceptions.Forbidden as err:
            raise trainkit.UserError(
                f"{ENV}={self.url}: no permission to list objects in gs://{self.url.bucket} "
                f"({_one_line(err)}); grant this account roles/storage.objectUser on the bucket"
            ) from None
        except Exception as err:  # connection refused, DNS, timeouts after retries
            raise trainkit.UserError(
                f"{ENV}={self.url}: cannot reach the bucket within {timeout:g} s ({_one_line(err)}); "
                "check the network and the name (HFGPU_BUCKET_TIMEOUT sets the wait)"
            ) from None

    def checkpoints(self) -> dict[int, list]:
        """Every checkpoint-N in the bucket (complete or not): step -> its blobs."""
        found: dict[int, list] = {}
        blobs = self.client.list_blobs(self.url.bucket, prefix=self.url.key("checkpoint-"), retry=_retry())
        for blob in blobs:
            name = blob.name[len(self.url.key()) + 1 :] if self.url.path else blob.name
            match = _CHECKPOINT_RE.match(name.split("/", 1)[0])
            if match:
                found.setdefault(int(match.group(1)), []).append(blob)
        return found

    @staticmethod
    def is_marker(blob) -> bool:
        return blob.name.endswith("/" + trainkit.COMPLETE_MARKER)

    @classmethod
    def is_complete(cls, blobs: list) -> bool:
        return any(cls.is_marker(b) for b in blobs)

    def complete_steps(self) -> list[int]:
        return sorted(step for step, blobs in self.checkpoints().items() if self.is_complete(blobs))

    # One object at a time: upload_file, download_file and delete_object are the only calls that
    # move or remove data (tests/probes/sitecustomize.py stops a run inside them to kill it there).

    def upload_file(self, path: Path, key: str) -> None:
        blob = self.client.bucket(self.url.bucket).blob(key)
        blob.upload_from_filename(str(path), retry=_retry())

    def download_file(self, blob, path: Path) -> None:
        blob.download_to_filename(str(path), retry=_retry())

    def delete_object(self, blob) -> None:
        from google.api_core import exceptions

        with contextlib.suppress(exceptions.NotFound):  # already gone (another cleanup) is fine
            blob.delete(retry=_retry())

    def upload_tree(self, folder: Path, prefix: str) -> None:
        """Upload FOLDER's files under PREFIX, the marker (if any) last."""
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.name == trainkit.COMPLETE_MARKER)  # stable: the marker goes last
        for path in files:
            self.upload_file(path, self.url.key(prefix, path.relative_to(folder).as_posix()))

    def delete(self, blobs: list) -> None:
        """Delete a checkpoint's objects, its marker first (it stops counting as complete at once)."""
        for blob in sorted(blobs, key=lambda b: not self.is_marker(b)):
            self.delete_object(blob)

    def download_checkpoint(self, step: int, target: Path) -> None:
        """checkpoint-STEP into TARGET, its marker last (a kill mid-way leaves it incomplete)."""
        blobs = sorted(self.checkpoints()[step], key=self.is_marker)
        base = self.url.key(f"checkpoint-{step}") + "/"
        for blob in blobs:
            path = target / blob.name[len(base) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.download_file(blob, path)

    def rotate(self, keep: int | None) -> None:
        """Keep the newest KEEP complete checkpoints (all when None); delete the rest and any incomplete."""
        found = self.checkpoints()
        complete = sorted(step for step, blobs in found.items() if self.is_complete(blobs))
        kept = set(complete if keep is None else complete[-keep:] if keep > 0 else [])
        for step in sorted(found):
            if step not in kept:
                log.info("bucket: deleting checkpoint-%d from %s", step, self.url)
                self.delete(found[step])


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return (text or type(err).__name__)[:200]


# ---------------------------------------------------------------- plugging in


def plug_in() -> None:
    """trainkit's entry point (trainkit.EXTENSIONS): check CHECKPOINT_BUCKET, then hook into every run.

    A bad or unreachable bucket raises trainkit.UserError before anything is read or written.
    """
    bucket = check_environment()
    if bucket is None:
        return
    trainkit.CALLBACKS.append(lambda trainer: sync(trainer, bucket, trainkit.save_total_limit(trainer)))
    trainkit.ON_FINISH.append(finish)


def check_environment() -> Bucket | None:
    """The Bucket named by CHECKPOINT_BUCKET, checked; None when it is unset."""
    url = os.environ.get(ENV, "").strip()
    if not url:
        return None
    return checked(url)


def checked(url: str) -> Bucket:
    """The Bucket at URL once it answers (HFGPU_BUCKET_TIMEOUT); trainkit.UserError when it cannot."""
    bucket = Bucket(parse_url(url))
    bucket.check(float(os.environ.get("HFGPU_BUCKET_TIMEOUT", "60")))
    return bucket


def attach(trainer, url: str, save_total_limit: int | None = None) -> BucketSync:
    """Mirror any transformers.Trainer's checkpoints to URL (gs://BUCKET/PATH); call before train().

    Checks the bucket, restores its newest complete checkpoint into output_dir when that is
    newer, and adds the uploading callback. Call `finish(trainer)` after training to upload
    the final model and results. SAVE_TOTAL_LIMIT defaults to trainer.args.save_total_limit.
    """
    limit = trainer.args.save_total_limit if save_total_limit is None else save_total_limit
    callback = sync(trainer, checked(url), limit)
    trainer.add_callback(callback)
    return callback


def sync(trainer, bucket: Bucket, save_total_limit: int | None) -> BucketSync:
    """Restore the bucket's newest complete checkpoint when it is newer; the callback that uploads saves.

    A trainkit.CALLBACKS entry (plug_in binds BUCKET): make_resilient calls it after adding
    trainkit's Preemption callback and before training resumes, and adds what it returns.
    """
    args = trainer.args
    if args.do_train and not args.resume_from_checkpoint:
        with args.main_process_first(local=True, desc="checkpoint download"):
            if args.local_process_index == 0:
                restore(bucket, Path(args.output_dir))
    return BucketSync(bucket, save_total_limit)


def restore(bucket: Bucket, output_dir: Path) -> int | None:
    """Download the bucket's newest complete checkpoint unless output_dir has one as new."""
    local = [
        int(m.group(1))
        for p in output_dir.glob("checkpoint-*")
        if (m := _CHECKPOINT_RE.match(p.name)) and (p / trainkit.COMPLETE_MARKER).is_file()
    ]
    remote = bucket.complete_steps()
    if not remote or (local and max(local) >= remote[-1]):
        return None
    step = remote[-1]
    target = output_dir / f"checkpoint-{step}"
    if target.exists():  # an incomplete local copy (a download or save cut short): replace it
        shutil.rmtree(target)
    log.info("downloading checkpoint-%d from %s (newer than output_dir's)", step, bucket.url)
    started = time.monotonic()
    bucket.download_checkpoint(step, target)
    log.info("downloaded checkpoint-%d in %.1f s", step, time.monotonic() - started)
    return step


def finish(trainer) -> None:
    """Wait for the checkpoint uploads, then upload the final model, results and logs."""
    syncs = [c for c in trainer.callback_handler.callbacks if isinstance(c, BucketSync)]
    if not syncs or not trainer.args.should_save:
        return
    sync = syncs[0]
    sync.wait()
    out = Path(trainer.args.output_dir)
    run_args = getattr(trainer.args, "trainkit", None)
    model_dir = Path(getattr(run_args, "model_dir", None) or out)
    started = time.monotonic()
    try:
        for folder in dict.fromkeys([out, model_dir]):  # the model folder last: its files win
            for path in sorted(folder.iterdir()) if folder.is_dir() else []:
                if path.name.startswith(".") or _CHECKPOINT_RE.match(path.name) or path == model_dir:
                    continue
                if path.is_dir():
                    sync.bucket.upload_tree(path, path.name)
                else:
                    sync.bucket.upload_file(path, sync.bucket.url.key(path.name))
    except Exception as err:
        raise trainkit.UserError(
            f"uploading the final model and results to {sync.bucket.url} failed: {_one_line(err)}"
        ) from None
    seconds = time.monotonic() - started
    log.info("uploaded the final model and results to %s in %.1f s", sync.bucket.url, seconds)


class BucketSync(TrainerCallback):
    """After each complete save: snapshot the checkpoint (hard links) and upload it in a thread."""

    def __init__(self, bucket: Bucket, save_total_limit: int | None):
        self.bucket = bucket
        self.save_total_limit = save_total_limit
        self.jobs: queue.Queue[tuple[int, Path]] = queue.Queue()
        self.seq = itertools.count()
        self.thread: threading.Thread | None = None
        self.upload_seconds = 0.0
        self.snapshot_seconds = 0.0  # time the training loop spent in on_save (hard links)

    def on_save(self, args, state, control, **kwargs):
        # Runs after trainkit's Preemption.on_save (added before us), which writes the marker.
        if not args.should_save:
            return
        folder = Path(args.output_dir, f"checkpoint-{state.global_step}")
        if not (folder / trainkit.COMPLETE_MARKER).is_file():
            return
        started = time.monotonic()
        snapshot = Path(args.output_dir, STAGING_DIR, f"{folder.name}.{next(self.seq)}")
        _link_tree(folder, snapshot)  # local rotation may delete FOLDER while we upload
        self.snapshot_seconds += time.monotonic() - started
        if self.thread is None:
            self.thread = threading.Thread(target=self._work, name="bucket-upload", daemon=True)
            self.thread.start()
        self.jobs.put((state.global_step, snapshot))

    def on_train_end(self, args, state, control, **kwargs):
        started = time.monotonic()
        self.wait()
        if args.should_save:
            log.info(
                "bucket: training waited %.2f s for uploads (snapshots %.2f s, at the end %.2f s); "
                "uploading took %.1f s in the background",
                self.snapshot_seconds + time.monotonic() - started,
                self.snapshot_seconds,
                time.monotonic() - started,
                self.upload_seconds,
            )

    def wait(self) -> None:
        """Block until the queued uploads are done; a stop signal meanwhile waits its turn."""
        pending = None
        while self.jobs.unfinished_tasks:
            log.info("waiting for %d checkpoint upload(s) to %s", self.jobs.unfinished_tasks, self.bucket.url)
            try:
                self.jobs.join()
            except trainkit.Preempted as err:  # SIGTERM after training: finish the upload first
                pending = err
        if pending is not None:
            raise pending

    def _work(self) -> None:
        while True:
            step, snapshot = self.jobs.get()
            try:
                self._upload(step, snapshot)
            except Exception as err:  # the next checkpoint tries again; training goes on
                log.error("bucket: upload of checkpoint-%d failed: %s", step, _one_line(err))
            finally:
                shutil.rmtree(snapshot, ignore_errors=True)
                self.jobs.task_done()

    def _upload(self, step: int, snapshot: Path) -> None:
        started = time.monotonic()
        name = f"checkpoint-{step}"
        stale = self.bucket.checkpoints().get(step)
        if stale:  # an earlier, maybe partial, upload of the same step: marker off first
            self.bucket.delete(stale)
        self.bucket.upload_tree(snapshot, name)
        seconds = time.monotonic() - started
        self.upload_seconds += seconds
        log.info("bucket: uploaded %s to %s in %.1f s", name, self.bucket.url, seconds)
        self.bucket.rotate(self.save_total_limit)


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link SRC's files into DST (a copy where the file system has no hard links)."""
    if dst.exists():
        shutil.rmtree(dst)

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(src, dst, copy_function=link)
