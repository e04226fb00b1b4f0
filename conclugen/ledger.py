"""The failure ledger: bad samples are recorded and skipped, never allowed to kill a shard.

Every stage that touches samples keeps a :class:`FailureLedger`, writes it as a TSV next to its
output (``results/{dataset}/failures/{stage}/{shard}.tsv``) and calls :meth:`FailureLedger.check`
before publishing: more than ``max_fraction`` of the shard's samples dropped fails the stage
loudly, because a silent "everything skipped" run is the worst outcome.

Columns: ``sample_id``, ``stage``, ``reason`` and ``action``: ``dropped`` (the sample leaves
the pipeline from this stage on), ``kept`` (a defect worth knowing, e.g. silent audio, that
later stages handle through the modality presence mask) or ``extra`` (something in the release
that is not a sample of the benchmark, e.g. a MELD video without an annotation row or a CMU-MOSEI
video in no standard fold: counted apart, never a failure and never against ``max_fraction``).
"""

from __future__ import annotations

import csv
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from conclugen.io import atomic_path

COLUMNS = ("sample_id", "stage", "reason", "action")
log = logging.getLogger("conclugen")


#: What running out of memory or a broken device says (torch's errors for both are RuntimeErrors;
#: the CPU allocator raises a plain RuntimeError with one of these messages).
FATAL_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory", "cuda error")


def is_fatal(error: BaseException) -> bool:
    """Whether an error is not one sample's fault and must fail the job instead of becoming that
    sample's ledger entry: memory exhaustion (host, GPU, the CPU allocator), a broken device,
    a missing or unreadable file that is not a sample's (weights, caches: a sample's own bad file
    is a :class:`conclugen.media.MediaError`), and anything that is not an ``Exception`` (an
    interrupt). torch is not imported for this: where it is not loaded, none of its errors occur.
    """
    if not isinstance(error, Exception) or isinstance(error, MemoryError | OSError):
        return True
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError | torch.AcceleratorError):
        return True
    return any(m in str(error).lower() for m in FATAL_MESSAGES)


class TooManyFailures(RuntimeError):
    """More than the configured fraction of a stage's samples failed."""


@dataclass
class FailureLedger:
    """Failures of one stage on one shard."""

    stage: str
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)

    def drop(self, sample_id: str, reason: str) -> None:
        """Record a sample that is skipped from this stage on."""
        self._add(sample_id, reason, "dropped")

    def keep(self, sample_id: str, reason: str) -> None:
        """Record a defect of a sample that stays in the pipeline."""
        self._add(sample_id, reason, "kept")

    def extra(self, sample_id: str, reason: str) -> None:
        """Record a file or entry of the release that is not a sample (not a failure)."""
        self._add(sample_id, reason, "extra", level=logging.INFO)

    def _add(self, sample_id: str, reason: str, action: str, level: int = logging.WARNING) -> None:
        # One line per record: tabs and newlines inside a reason would break the TSV.
        reason = " ".join(str(reason).split())
        log.log(level, "%s: %s %s (%s)", self.stage, action, sample_id, reason)
        self.rows.append((str(sample_id), self.stage, reason, action))

    @property
    def dropped(self) -> set[str]:
        return {r[0] for r in self.rows if r[3] == "dropped"}

    def check(self, total: int, max_fraction: float) -> None:
        """Raise :class:`TooManyFailures` if over ``max_fraction`` of ``total`` were dropped."""
        n = len(self.dropped)
        if total == 0:
            return
        if n / total > max_fraction:
            reasons = Counter(r[2] for r in self.rows if r[3] == "dropped").most_common(3)
            raise TooManyFailures(
                f"stage {self.stage!r}: {n} of {total} samples failed "
                f"({n / total:.1%} > max_failure_fraction {max_fraction:.1%}); "
                f"most common reasons: {reasons}"
            )

    def write(self, path: str | os.PathLike) -> None:
        write_rows(self.rows, path)


def write_rows(rows: Iterable[tuple[str, ...]], path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def read_ledger(path: str | os.PathLike) -> list[tuple[str, ...]]:
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = tuple(next(reader))
        if header != COLUMNS:
            raise ValueError(f"{path}: not a failure ledger (header {header})")
        return [tuple(row) for row in reader]


def merge_ledgers(paths: Iterable[str | os.PathLike], out: str | os.PathLike) -> int:
    """Concatenate per-stage, per-shard ledgers into one TSV sorted by sample and stage."""
    rows = sorted(row for p in paths for row in read_ledger(Path(p)))
    write_rows(rows, out)
    return len(rows)
