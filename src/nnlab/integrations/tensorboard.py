"""TensorBoard: a run's per-epoch scalars and weight histograms, laid out as ``keras.callbacks.TensorBoard`` does.

Two event streams, ``runs/<run_id>/tensorboard/train`` and
``runs/<run_id>/tensorboard/validation``, with the same ``epoch_*`` tags
(``epoch_loss``, ``epoch_mse``, ``epoch_mae``, ``epoch_r2``, ...), so the
training and validation curves of a metric overlay on one chart;
``tensorboard --logdir training_output/runs`` lists every run by its id
(``<run_id>/tensorboard/train``, ``<run_id>/tensorboard/validation``). The other
scalars are grouped into sections by a prefix: ``loss_weights/``,
``constraints/``, ``system/``. The step of every event is the epoch number of
``training_results.csv`` (1, 2, ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from nnlab._numbers import float_or_none
from nnlab.tracking import ErrorRecorder

__all__ = ["HISTOGRAM_BUCKETS", "NOT_SCALARS", "TENSORBOARD_DIR", "TRAIN_DIR", "VALIDATION_DIR", "TensorBoardSink",
           "cut_event_files", "histogram_counts", "read_events", "tensorboard_tag", "write_histograms"]

TENSORBOARD_DIR = "tensorboard"
# The two writers' subdirectories, as keras.callbacks.TensorBoard names them.
TRAIN_DIR, VALIDATION_DIR = "train", "validation"
# Columns of training_results.csv that are not per-epoch metrics.
NOT_SCALARS = ("epoch", "timestamp")
# Columns whose TensorBoard name is not derived from a train_/val_ prefix: (writer, tag).
_TAGS = {
    "r2_score": (VALIDATION_DIR, "epoch_r2"),  # the CSV's R² column is the validation set's
    "learning_rate": (TRAIN_DIR, "epoch_learning_rate"),  # where Keras' TensorBoard writes it
    "physics_loss": (TRAIN_DIR, "epoch_physics_loss"),  # the training half of the val_physics_loss pair
    "mse_weight": (TRAIN_DIR, "loss_weights/mse_weight"),
    "mae_weight": (TRAIN_DIR, "loss_weights/mae_weight"),
    "physics_loss_weight": (TRAIN_DIR, "loss_weights/physics_loss_weight"),
    "epoch_time": (TRAIN_DIR, "system/epoch_time_s"),
    "memory_mb": (TRAIN_DIR, "system/memory_mb"),
}
_CONSTRAINT_COLUMN = "constraint/"
# Buckets of a weight histogram: TensorBoard's default (tensorboard.plugins.histogram.summary_v2).
HISTOGRAM_BUCKETS = 30
# Significant binary digits of a float32 value: 0 (zero, NaN, inf) to 24.
_BIT_COUNTS = 25


def tensorboard_tag(column: str) -> tuple[str, str]:
    """Where a column of ``training_results.csv`` goes: ``(writer, tag)``, writer ``"train"`` or ``"validation"``.

    ``train_X`` and ``val_X`` become ``epoch_X`` in the train and validation
    writers (the curves overlay), ``r2_score`` validation ``epoch_r2``, the loss
    weights ``loss_weights/...``, ``constraint/...`` statistics ``constraints/...``,
    epoch time and memory ``system/...``; any other column keeps its name (train).

    Example:
        >>> tensorboard_tag("val_loss"), tensorboard_tag("r2_score")
        (('validation', 'epoch_loss'), ('validation', 'epoch_r2'))
    """
    if column in _TAGS:
        return _TAGS[column]
    if column.startswith("train_"):
        return TRAIN_DIR, "epoch_" + column.removeprefix("train_")
    if column.startswith("val_"):
        return VALIDATION_DIR, "epoch_" + column.removeprefix("val_")
    if column.startswith(_CONSTRAINT_COLUMN):
        return TRAIN_DIR, "constraints/" + column.removeprefix(_CONSTRAINT_COLUMN)
    return TRAIN_DIR, column



def _records(path: Path) -> tuple[list[bytes], bool]:
    """The records of one event file, and whether it ended in a truncated record."""
    import tensorflow as tf

    records: list[bytes] = []
    try:
        for record in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
            records.append(record)
    except tf.errors.DataLossError:
        return records, True  # a record cut short by a kill: what came before it is whole
    return records, False


def read_events(log_dir: str | os.PathLike) -> dict[str, dict[str, list[tuple[int, np.ndarray]]]]:
    """Every summary in ``log_dir``'s event files, raw: ``{plugin: {tag: [(step, value), ...]}}``.

    ``log_dir`` is one writer's directory (a run's ``tensorboard/train`` or
    ``tensorboard/validation``); subdirectories are not read.
    ``plugin`` is TensorBoard's (``"scalars"``, ``"histograms"``); a histogram's
    value is its ``(k, 3)`` array of bucket left edge, right edge and count.
    Nothing is merged or purged: a step written twice appears twice.

    Example:
        >>> # read_events("training_output/runs/<run_id>/tensorboard/validation")["scalars"]["epoch_loss"]
        >>> # [(1, array(0.53, dtype=float32)), (2, ...), ...]
    """
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util

    plugins: dict[str, str] = {}
    values: dict[str, list[tuple[int, np.ndarray]]] = {}
    for path in sorted(Path(log_dir).glob("events.out.tfevents.*")):
        for record in _records(path)[0]:
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name:  # written with a tag's first value only
                    plugins[value.tag] = value.metadata.plugin_data.plugin_name
                values.setdefault(value.tag, []).append((event.step, tensor_util.make_ndarray(value.tensor)))
    out: dict[str, dict[str, list[tuple[int, np.ndarray]]]] = {}
    for tag, entries in values.items():
        out.setdefault(plugins.get(tag, "unknown"), {})[tag] = entries
    return out


def cut_event_files(log_dir: str | os.PathLike, last_step: int) -> int:
    """Drop the events after ``last_step`` from every event file in ``log_dir`` and its subdirectories
    (a run's ``train`` and ``validation`` writers); returns how many were dropped.

    A resumed run redoes the epochs after its checkpoint: their old events go, so
    the stream has each step once (like the run's CSVs, cut back the same way).
    A file is rewritten only when it has such events, to a temporary name that
    then replaces it. A truncated last record (the process was killed while
    writing it) is dropped with them.
    """
    import tensorflow as tf
    from tensorboard.compat.proto import event_pb2

    dropped = 0
    for path in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        if not path.is_file() or path.name.endswith(".tmp"):
            continue
        records, truncated = _records(path)
        kept = [r for r in records if event_pb2.Event.FromString(r).step <= last_step]
        removed = len(records) - len(kept) + truncated
        if not removed:
            continue
        temporary = path.with_name(path.name + ".tmp")
        with tf.io.TFRecordWriter(str(temporary)) as writer:
            for record in kept:
                writer.write(record)
        os.replace(temporary, path)
        dropped += removed
    return dropped


def histogram_counts(variables: Sequence[Any], *, jit_compile: bool = False
                     ) -> Callable[[], list[tuple[np.ndarray, ...]]]:
    """A compiled function returning, per variable, ``(min, max, bucket counts, significant-bit counts)``.

    One ``tf.function`` over every variable, run in-graph: the value histogram
    has :data:`HISTOGRAM_BUCKETS` uniform buckets from the minimum to the maximum
    (the element ``x`` falls in bucket ``floor((x - min) / width)``, the maximum in
    the last, as ``tensorboard.plugins.histogram.summary_v2.histogram_pb`` counts);
    when all values are equal every element is in the last bucket. The
    significant-bit counts are a count of
    :func:`~nnlab.constraints.bits.significant_bits` over 0..24. Exact (every
    element counted), no copy of the weights to the host: on the default network
    6 ms per set counted (1.8 ms with ``jit_compile``, XLA, after a 0.4 s compile
    at the first), against 0.15–0.18 s with ``tf.summary.histogram`` per variable
    in eager mode (docs/performance.md).
    """
    import tensorflow as tf

    from nnlab.constraints.bits import significant_bits_of_int

    variables = list(variables)
    sizes = [int(np.prod(v.shape)) for v in variables]
    n = len(variables)

    def count(ids: tf.Tensor, length: int) -> tf.Tensor:
        # A segment sum rather than bincount: the same counts, and XLA compiles it.
        return tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, length)

    @tf.function(autograph=False, jit_compile=jit_compile)
    def counts():
        # All weights joined into one vector, each element tagged with its weight's index: two
        # counts in all instead of two per weight (a few large ops, not many small ones).
        values = [tf.reshape(tf.cast(v.value if hasattr(v, "value") else v, tf.float32), [-1]) for v in variables]
        owner = tf.concat([tf.fill([size], j) for j, size in enumerate(sizes)], 0)
        lo = tf.stack([tf.reduce_min(x) if size else tf.constant(0.0) for x, size in zip(values, sizes)])
        hi = tf.stack([tf.reduce_max(x) if size else tf.constant(0.0) for x, size in zip(values, sizes)])
        x = tf.concat(values, 0)
        width = tf.gather((hi - lo) / HISTOGRAM_BUCKETS, owner)
        index = tf.cast(tf.floor((x - tf.gather(lo, owner)) / tf.where(width > 0, width, 1.0)), tf.int32)
        index = tf.where(width > 0, tf.clip_by_value(index, 0, HISTOGRAM_BUCKETS - 1), HISTOGRAM_BUCKETS - 1)
        buckets = count(owner * HISTOGRAM_BUCKETS + index, n * HISTOGRAM_BUCKETS)
        bits = count(owner * _BIT_COUNTS + significant_bits_of_int(tf.bitcast(x, tf.int32)), n * _BIT_COUNTS)
        return lo, hi, tf.reshape(buckets, [n, HISTOGRAM_BUCKETS]), tf.reshape(bits, [n, _BIT_COUNTS])

    def run() -> list[tuple[np.ndarray, ...]]:
        lo, hi, buckets, bits = (np.asarray(t) for t in counts())
        return [(lo[j], hi[j], buckets[j], bits[j]) for j in range(n)]

    return run


def _histogram_value(summary: Any, tag: str, edges: np.ndarray, counts: np.ndarray) -> None:
    from tensorboard.plugins.histogram import metadata
    from tensorboard.util import tensor_util

    buckets = np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
    summary.value.add(tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
                      tensor=tensor_util.make_tensor_proto(buckets, dtype=np.float64))


def write_histograms(variables: Sequence[Any], counts: Sequence[tuple[np.ndarray, ...]]) -> None:
    """Write :func:`histogram_counts`' result to the default summary writer as one event.

    Per variable (named by its Keras path) ``weights/<path>``: the value
    histogram (none when the weight holds NaN or inf: no range to bucket);
    ``significant_bits/<path>``: one bucket per digit count from the
    fewest to the most present, as ``tf.summary.histogram(..., buckets=max - min + 1)``
    lays out integers.
    """
    import tensorflow as tf
    from tensorboard.compat.proto import summary_pb2

    summary = summary_pb2.Summary()
    for variable, (lo, hi, buckets, bits) in zip(variables, counts):
        name = getattr(variable, "path", variable.name)
        lo, hi = float(lo), float(hi)
        if np.isfinite(lo) and np.isfinite(hi):  # a diverged weight (NaN, inf) has no value range to bucket
            edges = np.linspace(lo, hi, HISTOGRAM_BUCKETS + 1) if hi > lo else np.full(HISTOGRAM_BUCKETS + 1, lo)
            _histogram_value(summary, f"weights/{name}", edges, buckets)
        present = np.flatnonzero(bits)
        if present.size:
            first, last = int(present[0]), int(present[-1])
            bit_edges = np.linspace(first, last, last - first + 2) if last > first else np.full(2, float(first))
            _histogram_value(summary, f"significant_bits/{name}", bit_edges, bits[first:last + 1])
    tf.summary.experimental.write_raw_pb(summary.SerializeToString())


class TensorBoardSink(keras.callbacks.Callback):
    """Write a run's per-epoch rows and weight histograms as TensorBoard events, in Keras' layout.

    Every epoch, each numeric cell of the tracker's row (the columns of
    ``training_results.csv``) becomes a scalar with ``step`` = the epoch number,
    in the ``train`` or ``validation`` writer under the tag
    :func:`tensorboard_tag` gives it: ``epoch_loss``, ``epoch_mse``,
    ``epoch_mae`` in both (the curves overlay), ``epoch_rmse`` and ``epoch_r2``
    (the CSV's ``r2_score``) in validation, ``epoch_learning_rate``,
    ``loss_weights/...``, ``constraints/...`` and ``system/...`` in train. An
    empty cell writes nothing: a constraint statistic of an epoch on which no
    constraint ran has no point. Every ``histogram_every`` epochs (config
    ``constraint_interval`` × ``tensorboard_histogram_freq``: every that many
    constraint applications) each trainable weight gets a histogram of its
    values (``weights/<path>``) and of their significant binary digits
    (``significant_bits/<path>``), in train, computed in-graph
    (:func:`histogram_counts`). At
    the end, :meth:`finish` adds the test metrics (``test/r2``, ...) at the last
    epoch, in validation.

    Place it after the :class:`~nnlab.tracking.PerformanceTracker` whose rows it
    reads. A failure (the directory cannot be written, TensorBoard missing) is
    recorded in ``errors`` once and the sink stops; training goes on.

    Args:
        log_dir: the run's TensorBoard directory (``runs/<run_id>/tensorboard``);
            the events go to its ``train`` and ``validation`` subdirectories.
        rows: a function returning the tracker's rows so far.
        errors: the run's :class:`~nnlab.tracking.ErrorRecorder`.
        histogram_every: histogram interval in epochs (0: no histograms).
        resume_from: the epoch a resumed run continues after; later events of
            the earlier attempt are removed first (:func:`cut_event_files`).
        jit_compile: count the histograms with XLA (config ``jit_compile``):
            a third of the time per set, 0.4 s of compiling at the first.

    Example:
        >>> # tracker = PerformanceTracker("training_results.csv")
        >>> # sink = TensorBoardSink("tensorboard", lambda: tracker.rows, histogram_every=10)
        >>> # model.fit(..., callbacks=[tracker, sink])
    """

    component = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike, rows: Callable[[], Sequence[Mapping[str, Any]]], *,
                 errors: ErrorRecorder | None = None, histogram_every: int = 10, resume_from: int | None = None,
                 jit_compile: bool = False) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self._rows = rows
        self.errors = errors if errors is not None else ErrorRecorder()
        self.histogram_every = int(histogram_every)
        self.resume_from = resume_from
        self.jit_compile = bool(jit_compile)
        self._writer: Any = None  # the train writer (histograms too)
        self._val_writer: Any = None
        self._failed = False
        self._last_step = resume_from or 0
        self._histogram_counts: Callable[[], list[tuple[np.ndarray, ...]]] | None = None

    def _fail(self, exc: BaseException) -> None:
        self._failed = True
        self.errors.record(self.component, exc)
        self._close()

    def _close(self) -> None:
        writers, self._writer, self._val_writer = (self._writer, self._val_writer), None, None
        for writer in writers:
            if writer is None:
                continue
            try:
                writer.close()
            except Exception as exc:  # an optional sink must not cost the run
                self.errors.record(self.component, exc)

    def on_train_begin(self, logs=None):
        if self._writer is not None or self._failed:
            return
        try:
            import tensorflow as tf

            self.log_dir.mkdir(parents=True, exist_ok=True)
            if self.resume_from is not None:
                cut_event_files(self.log_dir, self.resume_from)
            self._writer = tf.summary.create_file_writer(str(self.log_dir / TRAIN_DIR))
            self._val_writer = tf.summary.create_file_writer(str(self.log_dir / VALIDATION_DIR))
        except Exception as exc:  # ImportError (no tensorboard), OSError, a TF error
            self._fail(exc)

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            return
        rows = self._rows()
        if not rows or int(rows[-1].get("epoch", -1)) != epoch + 1:
            return  # the tracker could not make this epoch's row (it recorded why)
        try:
            step = epoch + 1
            by_writer = _by_writer(rows[-1].items())
            with self._writer.as_default(step=step):
                self._scalars(by_writer[TRAIN_DIR])
                if self.histogram_every and step % self.histogram_every == 0 and self.model is not None:
                    self._histograms()
            with self._val_writer.as_default(step=step):
                self._scalars(by_writer[VALIDATION_DIR])
            self._writer.flush()
            self._val_writer.flush()
            self._last_step = step
        except Exception as exc:  # an optional sink must not cost the run
            self._fail(exc)

    @staticmethod
    def _scalars(items: Iterable[tuple[str, Any]]) -> None:
        """One event with every finite value as a scalar (one write, not one TF op per scalar: ~7x cheaper)."""
        import tensorflow as tf
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.scalar.summary import scalar_pb

        summary = summary_pb2.Summary()
        for tag, value in items:
            number = float_or_none(value)
            if number is not None:
                summary.value.extend(scalar_pb(tag, number).value)
        if summary.value:
            tf.summary.experimental.write_raw_pb(summary.SerializeToString())

    def _histograms(self) -> None:
        """Every trainable weight's value and significant-bit histograms, as one event."""
        if self._histogram_counts is None:
            self._histogram_counts = histogram_counts(self.model.trainable_weights, jit_compile=self.jit_compile)
        write_histograms(self.model.trainable_weights, self._histogram_counts())

    def describe(self) -> str | None:
        """The command that shows the run, for the run's summary (None when the sink failed).

        The run directory is printed beside it; TensorBoard lists this run as
        ``<run_id>/tensorboard/train`` and ``.../validation``.
        """
        return None if self._failed else f"tensorboard --logdir {self.log_dir.parent.parent}"

    def finish(self, status: str, test: Mapping[str, Any] | None) -> None:
        """Add the test metrics (scaled) at the last epoch, in the validation writer, and close both writers."""
        if self._val_writer is not None and test:
            try:
                with self._val_writer.as_default(step=self._last_step):
                    self._scalars((f"test/{k}", v) for k, v in (test.get("scaled") or {}).items())
            except Exception as exc:  # an optional sink must not cost the run
                self._fail(exc)
        self._close()


def _by_writer(items: Iterable[tuple[str, Any]]) -> dict[str, list[tuple[str, Any]]]:
    """A row's cells as ``(tag, value)`` pairs per writer (:func:`tensorboard_tag`)."""
    out: dict[str, list[tuple[str, Any]]] = {TRAIN_DIR: [], VALIDATION_DIR: []}
    for column, value in items:
        if column not in NOT_SCALARS:
            writer, tag = tensorboard_tag(column)
            out[writer].append((tag, value))
    return out
