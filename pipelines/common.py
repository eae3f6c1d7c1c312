"""What every tokenize pipeline shares: its config, the read → steps → sink frame, and the run.

A modality pipeline supplies a reader (file URL → records and dead letters) and a list of
steps; :func:`build` wires them with the counting and the shard sink, and :func:`run` executes
on whatever runner the Beam options name (DirectRunner by default): it takes the dataset's
writer lock first, shows a live count on local runs, and returns the new manifest.

:func:`build_batched` is the leaner frame for a pipeline whose work is one
:class:`~trimodal.pipelines.outcomes.BatchStep` (text): batches, not records, are Beam's
elements, and on a local runner the whole job is four steps (files in, dealt to the workers,
read + process + spill, assemble) with memory bounded by the spill sink
(:mod:`trimodal.pipelines.spill`); elsewhere it is the plain Beam graph. Both write the same bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.window import GlobalWindows

from trimodal import storage
from trimodal.config import option
from trimodal.pipelines import progress
from trimodal.pipelines.outcomes import FILTERED, NAMESPACE, REJECTED, BatchStep, Step, Tally, run_step
from trimodal.pipelines.batch_sink import WriteBatches
from trimodal.pipelines.readers import Reader
from trimodal.pipelines.records import DeadLetter, Record
from trimodal.pipelines.sink import SinkConfig, WriteDataset
from trimodal.pipelines.spill import AssembleDataset, SpillWriter, remove_spill, spill_folder, sweep_spills
from trimodal.shards.lock import DatasetLock
from trimodal.shards.manifest import MANIFEST_NAME, Manifest

DEFAULT_BEAM_ARGS = ["--runner=DirectRunner"]
READ_ERRORS = "read_errors"


def _mb(value: float) -> int:
    return int(round(float(value) * 1e6))


def _in_mb(n_bytes: int) -> float | int:
    """The flag's view of a byte count (``--help`` shows ``--shard-mb``'s default as 128)."""
    mb = n_bytes / 1e6
    return int(mb) if float(mb).is_integer() else mb


_mb.inverse, _mb.metavar = _in_mb, "MB"  # type: ignore[attr-defined]


@dataclass
class PipelineConfig:
    """Options every tokenize pipeline takes (each pipeline's config adds its own)."""

    inputs: list[str] = option(default_factory=list, flag="input", help="input files, globs or brace ranges (fsspec URLs)")
    out: str = option("", help="dataset root to write (fsspec URL)")
    text_tokenizer: str = option("", help="SentencePiece .model, a .tiktoken file, or a tiktoken encoding name")
    source: str = option("", help="source name recorded per sample (default: the input's folder and file name)")
    target_shard_bytes: int = option(128_000_000, flag="shard-mb", convert=_mb,
                                     help="target shard size (the flag in MB, the config key in bytes)")
    compression: Literal["none", "zstd"] = option(
        "zstd", help="shard compression: zstd (level 3: about 18x smaller on short documents, read as fast; "
                     "BENCHMARKS.md) or none (plain tars, which stock webdataset reads without `zstd -d`)")
    val_fraction: float = option(0.0, help="share of records (by a hash of their id) written to the val split")
    max_record_bytes: int = option(256 * 2**20, help="one input record (JSON line, tar member, media file) at most")
    progress: bool = option(True, help="live count of records on local runs")

    def __post_init__(self) -> None:
        if isinstance(self.inputs, str):
            self.inputs = [self.inputs]
        if not self.inputs:
            raise ValueError("--input is required: give at least one input file or pattern")
        if not self.out:
            raise ValueError("--out is required: the dataset root to write")
        if not self.text_tokenizer:
            raise ValueError("--text-tokenizer is required")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.target_shard_bytes is None or self.target_shard_bytes < 1:
            raise ValueError(f"target_shard_bytes must be positive, got {self.target_shard_bytes}")
        if self.compression not in ("none", "zstd"):
            raise ValueError(f"compression must be none or zstd, got {self.compression!r}")

    def recorded(self) -> dict[str, Any]:
        """What the manifest records of the config (not the inputs or the output)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("inputs", "out", "progress")}


def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam options pass through unchanged; only a missing ``--runner`` gets the DirectRunner
    (naming it avoids the Prism runner's binary download)."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args = DEFAULT_BEAM_ARGS + args
    options = PipelineOptions(args)
    opts = options.get_all_options()
    named = any(a == "--direct_num_workers" or a.startswith("--direct_num_workers=") for a in args)
    if (is_local_runner(options) and not named
            and (opts.get("direct_running_mode") or "in_memory") != "in_memory"):
        args.append(f"--direct_num_workers={default_local_workers(os.cpu_count())}")
        options = PipelineOptions(args)
    return options


def default_local_workers(cpus: int | None) -> int:
    """Workers of a multi-worker local run that names no ``--direct_num_workers``: one per two
    cores. Each worker's encode and its runner traffic want about a core, so a second worker on a
    2-core machine adds CPU (+42–70 % measured) for no wall-time gain."""
    return max(1, (cpus or 1) // 2)


class _ReadFile(beam.DoFn):
    """One input file → records (main output) and dead letters (``read_errors``)."""

    def __init__(self, read_file: Callable[[str], Iterator[Record | DeadLetter]]):
        self.read_file = read_file

    def process(self, url: bytes):
        # inputs travel as bytes: a local file name need not be valid UTF-8 (Beam's str coder
        # insists on it), and os.fsdecode gives back the exact name to open
        for x in self.read_file(url.decode("utf-8", "surrogateescape")):
            yield beam.pvalue.TaggedOutput(READ_ERRORS, x) if isinstance(x, DeadLetter) else x


def build(p: beam.Pipeline, inputs: list[str], read_file: Callable[[str], Iterator[Record | DeadLetter]],
          steps: Sequence[tuple[str, Step]], sink: SinkConfig,
          batch_step: tuple[str, beam.PTransform] | None = None) -> beam.PCollection:
    """read → steps → (batched tokenization) → shards + dead-letter + manifest."""
    read = (
        p
        | "Inputs" >> beam.Create([u.encode("utf-8", "surrogateescape") for u in inputs])
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(_ReadFile(read_file)).with_outputs(READ_ERRORS, main="ok")
    )
    good, dead = read.ok, [read[READ_ERRORS]]
    n_read = (good, read[READ_ERRORS]) | "AllRead" >> beam.Flatten() | "CountRead" >> beam.combiners.Count.Globally()
    good = good | "Rebalance" >> beam.Reshuffle()
    for label, step in steps:
        good, filt, rej = run_step(good, step, label)
        dead += [filt, rej]
    if batch_step is not None:
        label, transform = batch_step
        res = good | label >> transform
        good = res.ok
        dead += [res[FILTERED], res[REJECTED]]
    all_dead = dead | "AllDeadLetter" >> beam.Flatten()
    return (good, all_dead, n_read) | "WriteDataset" >> WriteDataset(sink)


N_READ = "n_read"
DEAD = "dead"


def _url(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _ReadBatches(beam.DoFn):
    """One input file → batches of records (main output), its dead letters (``read_errors``) and
    how many items it held (``n_read``)."""

    def __init__(self, reader: Reader, batch_size: int):
        self.reader, self.batch_size = reader, batch_size

    def process(self, url: bytes):
        n = 0
        for records, dead in self.reader.batches(_url(url), self.batch_size):
            n += len(records) + len(dead)
            if dead:
                yield beam.pvalue.TaggedOutput(READ_ERRORS, dead)
            if records:
                yield records
        yield beam.pvalue.TaggedOutput(N_READ, n)


class _BatchOut(beam.DoFn):
    """The batch step in the Beam graph: a batch of records → its list of samples (main output)
    and its list of dead letters (``dead``), one element each, so that what Beam moves to the sink
    stays one element per batch (:class:`~trimodal.pipelines.batch_sink.WriteBatches`)."""

    def __init__(self, step: BatchStep):
        self.step = step

    def setup(self) -> None:
        self.step.setup()

    def process(self, batch: list[Record]):
        tally = Tally()
        samples, dead = self.step.apply_batch(batch, tally)
        tally.flush()
        if dead:
            yield beam.pvalue.TaggedOutput(DEAD, dead)
        if samples:
            yield samples

    def teardown(self) -> None:
        self.step.teardown()


class _SpillFiles(beam.DoFn):
    """Local runners: read the input files dealt to this element, run the batch step on them and
    spill the results to disk, batch by batch (nothing of the corpus stays in memory); emits the
    closed spill parts, keyed for the one group the assembly reads. Each batch is begun before the
    previous one is finished (:meth:`~trimodal.pipelines.outcomes.BatchStep.begin`), so a step's
    background work overlaps the reading and serialising around it."""

    def __init__(self, reader: Reader, step: BatchStep, batch_size: int, folder: str, val_fraction: float):
        from trimodal.pipelines import spill

        self.reader, self.step, self.batch_size = reader, step, batch_size
        self.folder, self.val_fraction = folder, val_fraction
        # read when the graph is built, so worker processes get the launcher's values
        self.part_bytes, self.part_rows = spill.SPILL_PART_BYTES, spill.SPILL_PART_ROWS
        self.writer: SpillWriter | None = None

    def setup(self) -> None:
        self.step.setup()

    def start_bundle(self) -> None:
        self.writer = None

    def process(self, dealt: tuple[int, list[bytes]]):
        if self.writer is None:
            self.writer = SpillWriter(self.folder, self.val_fraction, self.part_bytes, self.part_rows)
        for url in dealt[1]:
            pending = None  # the batch begun before this one: finished while this one encodes
            for records, dead in self.reader.batches(_url(url), self.batch_size):
                tally = Tally()
                state = self.step.begin(records, tally) if records else None
                if pending is not None:
                    self._finish(*pending)
                pending = (state, dead, tally, len(records) + len(dead))
            if pending is not None:
                self._finish(*pending)
            for part in self.writer.take():
                yield None, part

    def _finish(self, state: Any, dead: list[DeadLetter], tally: Tally, n_read: int) -> None:
        samples, dropped = self.step.end(state, tally) if state is not None else ([], [])
        tally.flush()  # in the DoFn's thread: Beam's counters live there
        self.writer.add(samples, dead + dropped, n_read)

    def finish_bundle(self):
        if self.writer is not None:
            for part in self.writer.close():
                yield GlobalWindows.windowed_value((None, part))
            self.writer = None

    def teardown(self) -> None:
        self.step.teardown()


def _largest_first(inputs: list[str]) -> list[str]:
    """Local files by size, largest first (dealt round-robin, that balances the workers)."""
    def size(url: str) -> int:
        try:
            return os.path.getsize(storage.local_path(url)) if storage.is_local(url) else 0
        except OSError:
            return 0

    return sorted(inputs, key=size, reverse=True)


class _Inputs(beam.PTransform):
    """The input files keyed by their position, from one Impulse (a ``Create`` adds two steps)."""

    def __init__(self, keyed: list[tuple[int, bytes]]):
        super().__init__()
        self.keyed = keyed

    def expand(self, pbegin):
        keyed = self.keyed
        return pbegin | "Impulse" >> beam.Impulse() | "Files" >> beam.FlatMap(lambda _: keyed)


def build_batched(p: beam.Pipeline, inputs: list[str], reader: Reader, step: BatchStep, sink: SinkConfig,
                  batch_size: int, label: str = "Tokenize", graph: Literal["auto", "local", "beam"] = "auto"
                  ) -> beam.PCollection:
    """read → batch step → shards + dead-letter + manifest, with batches (not records) as elements.

    On a local runner the job is ``Inputs → SpreadFiles → <label> → WriteDataset`` (with one
    worker, ``Inputs → <label> → WriteDataset``: all files are one element, nothing to deal out,
    so no GroupByKey): ``<label>``
    reads, processes and spills whole files (:class:`~trimodal.pipelines.spill.SpillWriter`) and
    ``WriteDataset`` (an :class:`~trimodal.pipelines.spill.AssembleDataset`) assembles the spill, so memory stays
    bounded whatever the corpus size and the per-element work of Beam is paid per file. Elsewhere
    (Dataflow, portable runners) it is the plain Beam graph: ``Read`` (batches) → ``Rebalance`` →
    ``<label>`` (the step; a batch's samples and its dead letters are one element each) →
    :class:`~trimodal.pipelines.batch_sink.WriteBatches`. Both
    write the same bytes; ``graph`` forces one (tests compare them on the local runner)."""
    if graph == "local" or (graph == "auto" and is_local_runner(p.options)):
        folder = spill_folder(sink.run_id)
        # files dealt to the workers in turn: grouped by position, the local runner hands the
        # groups out round-robin (a Reshuffle's random keys split unevenly), largest files first
        urls = [u.encode("utf-8", "surrogateescape") for u in _largest_first(inputs)]
        if local_workers(p.options) == 1:
            # one worker: nothing to deal out, so no GroupByKey; all files are one element
            files = p | "Inputs" >> _Inputs([(0, urls)])
        else:
            files = p | "Inputs" >> _Inputs(list(enumerate(urls))) | "SpreadFiles" >> beam.GroupByKey()
        parts = files | label >> beam.ParDo(_SpillFiles(reader, step, batch_size, folder, sink.val_fraction))
        return parts | "WriteDataset" >> AssembleDataset(sink, folder)
    urls = [u.encode("utf-8", "surrogateescape") for u in inputs]
    read = (
        p
        | "Inputs" >> beam.Create(urls, reshuffle=False)
        | "SpreadFiles" >> beam.Reshuffle()
        | "Read" >> beam.ParDo(_ReadBatches(reader, batch_size)).with_outputs(READ_ERRORS, N_READ, main="ok")
    )
    n_read = read[N_READ] | "CountRead" >> beam.CombineGlobally(sum)
    res = (
        read.ok
        | "Rebalance" >> beam.Reshuffle()
        | label >> beam.ParDo(_BatchOut(step)).with_outputs(DEAD, main="ok")
    )
    dead = (read[READ_ERRORS], res[DEAD]) | "AllDeadLetter" >> beam.Flatten()
    return (res.ok, dead, n_read) | "WriteDataset" >> WriteBatches(sink)


#: What a pipeline writes or removes under its root (see :func:`~trimodal.pipelines.sink.remove_stale`).
OUTPUT_NAMES = ["shard-*", "*-shard-*", "deadletter", "deadletter/*", MANIFEST_NAME, ".trimodal-lock"]


def check_contained(root: str) -> None:
    """Refuse, in one line, a root whose outputs are symbolic links that leave it: a re-run's
    stale-file cleanup and dead-letter writes would otherwise delete or write files elsewhere."""
    leaving = storage.links_leaving(root, OUTPUT_NAMES)
    if leaving:
        raise ValueError(f"{leaving[0]} is a symbolic link to {os.path.realpath(leaving[0])}, outside the output "
                         f"root {root}: a pipeline only writes and removes files inside its root; remove the link "
                         f"or choose another --out")


def prepare_output(root: str) -> None:
    """A re-run first removes the old manifest: until the new one is written the root is
    incomplete, so no reader can pair an old manifest with new shards."""
    url = storage.join(root, MANIFEST_NAME)
    fs, path = storage.fs_and_path(url)
    if fs.exists(path):
        fs.rm(path)


def direct_runner(options: PipelineOptions) -> beam.runners.runner.PipelineRunner | None:
    """For ``--runner=DirectRunner``: the FnApiRunner, built as the DirectRunner builds it for a
    batch job, else None (Beam picks the runner from the options).

    Why not let the DirectRunner pick: Beam's DirectRunner first tries the Prism runner, which
    downloads its binary from the network on every job (a failed attempt costs ~0.1 s and a
    network access; a successful one runs the job on an engine that ignores
    ``--direct_running_mode`` and ``--direct_num_workers``), and only then falls back to this."""
    runner = str(options.get_all_options().get("runner") or "DirectRunner").split(".")[-1]
    if runner not in ("DirectRunner", "SwitchingDirectRunner"):
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def local_workers(options: PipelineOptions) -> int | None:
    """How many workers a local run shares the machine between (processes or threads of the
    FnApiRunner: ``--direct_num_workers``, 0 meaning one per core), or None off the local runners."""
    if not is_local_runner(options):
        return None
    opts = options.get_all_options()
    if (opts.get("direct_running_mode") or "in_memory") == "in_memory":
        return 1
    n = opts.get("direct_num_workers")
    n = 1 if n is None else int(n)
    return n if n > 0 else (os.cpu_count() or 1)


def is_local_runner(options: PipelineOptions) -> bool:
    runner = str(options.get_all_options().get("runner") or "DirectRunner")
    return runner.split(".")[-1] in ("DirectRunner", "FnApiRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a local job; the message is the one line the command prints."""


@contextlib.contextmanager
def quiet_interrupt(root: str) -> Iterator[None]:
    """Ctrl-C stops the job with one line, not a page of Beam traceback: the handler silences
    logging and worker-thread tracebacks first, then raises in the main thread; whatever Beam
    raises on the way out is replaced by :class:`Interrupted`. Shards become final only by an
    atomic rename and the manifest is written last, so the root is as before the run (the
    crash-safety tests kill jobs mid-write) and the same command can simply be run again."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit = threading.Event()
    message = (f"interrupted: {root} was left clean (no partial shard, no new manifest; the writer lock "
               f"released): run the same command again")

    def handler(signum, frame):
        hit.set()
        logging.disable(logging.CRITICAL)
        threading.excepthook = lambda args: None
        raise Interrupted(message)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    except BaseException:
        if hit.is_set():  # Beam re-raises it with a step name appended, or wraps it
            raise Interrupted(message) from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
        if hit.is_set():
            logging.disable(logging.NOTSET)


def run(build_fn: Callable[[beam.Pipeline, str], Any], root: str, beam_args: Sequence[str],
        show_progress: bool = True) -> Manifest | None:
    """Run the job; returns the new manifest, or None for a Dataflow ``--dry_run`` (the job graph
    is built and checked, nothing runs, and an existing dataset is left untouched).

    ``build_fn(p, run_id)`` wires the job. The dataset's writer lock is taken first (a second
    writer of the same root refuses at once) and released by the job's last step, after the
    manifest; a job that fails leaves it, naming its run, until the next run on the same host
    finds its process gone or someone removes it."""
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    options = pipeline_options(beam_args)
    dry_run = bool(options.get_all_options().get("dry_run"))
    if dry_run:
        with beam.Pipeline(options=options) as p:
            build_fn(p, "dry-run")
        return None
    check_contained(root)
    lock = DatasetLock.acquire(root)
    local = is_local_runner(options)
    try:
        prepare_output(root)
        if local:
            sweep_spills()
        with quiet_interrupt(root) if local else contextlib.nullcontext(), progress.report(show_progress and local):
            p = beam.Pipeline(runner=direct_runner(options), options=options)
            build_fn(p, lock.run_id)
            result = p.run()
            try:
                result.wait_until_finish()
            except Exception as e:
                if local:
                    raise
                raise JobFailed(job_error(str(e))) from e
        if not local and show_progress:
            # workers elsewhere share no progress folder: the job's own counters, once it is done
            print(final_line(job_counters(result)), file=sys.stderr)
    except BaseException:
        if local:
            lock.release()  # the local job is over: nothing else writes under this lock
        raise
    finally:
        if local:
            remove_spill(spill_folder(lock.run_id))  # normally removed by the job's last step already
    lock.release()  # normally released by the job's last step already; idempotent
    return Manifest.load(root)


class JobFailed(RuntimeError):
    """A job on a remote runner (portable job server, Dataflow) failed on a worker."""


_ERROR_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit)\b):\s*(.*\S)")


_WRAPPERS = ("Traceback (most recent call last)", "Pipeline ", "Error received from SDK harness")


def job_error(text: str) -> str:
    """One line out of a runner's failure report (the worker's whole traceback, often repeated
    per retry): the first exception it names that is not Beam's wrapping of another, i.e. the
    root cause, whose message says what the worker could not do."""
    for raw in text.splitlines():
        m = _ERROR_LINE.match(raw)
        if m and not any(w in m.group(2) for w in _WRAPPERS):
            return f"the job failed on a worker: {m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return f"the job failed on a worker: {first}"


def job_counters(result: Any) -> dict[str, int]:
    """The job's ``trimodal`` counters by name, summed over steps (empty where the runner keeps none)."""
    from apache_beam.metrics.metric import MetricsFilter

    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
    except Exception:  # a runner without metrics: nothing to show, the manifest has the totals
        return {}
    out: dict[str, int] = {}
    for c in counters:
        v = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(v or 0)
    return out


def final_line(counters: dict[str, int]) -> str:
    """The progress line of a finished remote job, from its counters: records read, written,
    filtered and rejected, and the shards each sink wrote (``WriteDataset``: the Beam graph sink)."""
    totals = {k: 0 for k in progress.KINDS}
    sinks: dict[str, int] = {}
    readers = {name.split("/")[0] for name in counters if name.split("/")[1:2] == ["read"]}
    for name, n in counters.items():
        parts = name.split("/")
        if len(parts) >= 2 and parts[1] in totals:
            totals[parts[1]] += n
        if parts[0] in readers and parts[1:2] == [REJECTED]:
            totals["read"] += n  # a reader counts what it parses as read, what it cannot as rejected
        if len(parts) == 2 and parts[1] == "shards":
            sinks[parts[0]] = sinks.get(parts[0], 0) + n
    line = progress.line(totals, 0).strip().split("] ", 1)[-1]
    return f"job done: {line}" + "".join(f"  (sink {k}: {n} shards)" for k, n in sorted(sinks.items()))


def summary(manifest: Manifest, root: str) -> str:
    c = manifest.counts
    if manifest.kind == "mixed":  # rows, not samples: read != written + filtered + rejected
        lines = [
            f"wrote {c['written']} rows of {manifest.seq_len} tokens in {len(manifest.shards)} shards to {root}",
            f"  read {c['read']} input samples; filtered {sum(c['filtered'].values())}"
            + (f"; stopped: {c['stopped']}" if c.get("stopped") else ""),
        ]
        for name, s in (c.get("sources") or {}).items():
            lines.append(f"  {name} ({s.get('task', s.get('modality'))}, weight {s['weight']:.3g}): {s['rows']} of {s['rows_available']} rows, "
                         f"{s['samples_consumed']} of {s['samples']} samples")
        for reason, n in c["filtered"].items():
            lines.append(f"  filtered {reason}: {n}")
        return "\n".join(lines)
    filt = sum(c["filtered"].values())
    rej = sum(c["rejected"].values())
    lines = [
        f"wrote {c['written']} samples in {len(manifest.shards)} shards to {root}",
        f"  read {c['read']} = written {c['written']} + filtered {filt} + rejected {rej}",
        f"  tokens: {manifest.tokens()}",
    ]
    splits = manifest.splits()
    if len(splits) > 1 or splits == ["val"]:
        lines.append("  splits: " + ", ".join(f"{s} {sum(x.samples for x in manifest.split_shards(s))} samples"
                                              for s in splits))
    for outcome in ("filtered", "rejected"):
        for reason, n in c[outcome].items():
            lines.append(f"  {outcome} {reason}: {n}")
    if manifest.dead_letter:
        lines.append(f"  dead-letter records: {storage.join(root, manifest.dead_letter)}/")
    return "\n".join(lines)
