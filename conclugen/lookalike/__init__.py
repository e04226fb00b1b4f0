"""Look-alike datasets: small seeded copies of VoxCeleb2, CAER, MELD and CMU-MOSEI in their real
distribution form (archives, byte-split parts, CSVs, HDF5), so the download, extraction and
manifest code that reads the real data reads these too. ``docs/lookalike-spec.md`` is the contract
(layouts, names, columns, the truth file, id conventions); this module follows it.

Every clip carries its class (anger, disgust, fear, happy, neutral, sad, surprise) in all three
modalities:

- video (25 fps): matplotlib's ``grace_hopper.jpg`` head on a random room-like background, moving
  and zooming smoothly, with class-specific mouth and brow shapes and a class tint, both stronger
  with the clip's intensity level (below), plus a mild per-clip jitter. VoxCeleb2 is 224x224
  with a large centred face; the others are 320x240 with a face box 70-140 px wide moving
  around. ``truth.parquet`` holds the face box of every frame as MTCNN
  reports it.
- audio: espeak-ng speaks the sentence with class prosody (pitch, speed, amplitude; pitch and
  loudness rise with the intensity level) in a voice per clip (VoxCeleb2: per identity; MELD:
  per speaker; MOSEI: per video). Around the sentence, wherever the clip is not speaking, two
  chimes sound: a class tone (:data:`TONES`) and a level tone (:data:`LEVEL_TONES`), without
  which the authors' audio front end (power mel, min-max per clip) leaves little of the class or
  the level in a random ResDAVEnet's features. VoxCeleb2 audio is 16 kHz mono, the others
  44.1 kHz stereo.
- text: "<adverb> <adjective>" in one of eleven templates; the adverb (:data:`ADVERBS`, "a
  little" to "extremely") and the adjective's rank in its class's list (mild to strong) are the
  clip's intensity level (0-5); every word was checked to survive Whisper tiny.en. The level is
  shared by the three modalities: an instance-level cue beyond the class, so that cross-modal
  retrieval has something to find.

A clip lasts ``clip_seconds`` (uniform in the range, whole frames) or longer when its sentence
needs it; a MOSEI segment likewise, with silent gaps between segments.

Sizes: ``sizes[dataset][key]``; a missing dataset or key takes :data:`DEFAULT_SIZES`.

=========== ==================== ===============================================================
dataset     key                  meaning
=========== ==================== ===============================================================
voxceleb2   identities           speakers ``idNNNNN`` (int >= 1)
            videos_per_identity  YouTube videos per speaker (int >= 1)
            clips_per_video      clips per video (int >= 1)
            parts                byte-split parts per archive, ``_partaa``, ``_partab``, ... (>= 1)
caer        train, validation,   clips per class in that split (int >= 1)
            test
meld        train, dev, test     utterances per class in that split (int >= 1); on top come the
                                 known-bad ``dia125_utt3`` (train) and ``dia110_utt7`` (dev), two
                                 orphan ``final_videos_test*.mp4`` and one ``._`` junk file
mosei       videos               full videos (int >= 3), ~70/10/20 % over the standard folds with
                                 at least one video per fold
            segments_per_video   ``[min, max]`` labelled segments per video (ints, 1 <= min <= max)
=========== ==================== ===============================================================

Bad files: with ``bad_fraction`` > 0, a seeded ``bad_fraction`` of each dataset's clips gets one
bad kind, and every kind that applies appears at least once when there are enough clips. Every
split (and where possible every split and class) keeps at least one good clip. Kinds:
``zero_bytes`` (empty file), ``truncated`` (cut to 40 % of its bytes; an mp4 is written without
faststart first, so the cut loses its index), ``no_audio`` (no audio stream; VoxCeleb2 also has no
.m4a), ``silent_audio`` (an audio stream of digital zeros, the .m4a too), ``no_face`` (background
only) and ``bad_label_row`` (MELD: Emotion and Dialogue_ID ``n/a``; MOSEI: a NaN in the segment's
features). The first four spoil a whole file, so in CMU-MOSEI they hit a whole video (every
segment of it is marked); ``no_face`` and ``bad_label_row`` hit one segment.

Determinism: the seed and the sizes fix every draw (ids, classes, sentences, voices, durations,
motion, bad kinds), hence ``truth.parquet``; each dataset draws from its own stream, so generating
a subset gives the same data. Media bytes are not guaranteed identical across FFmpeg builds.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from conclugen.io import atomic_path, write_parquet
from conclugen.lookalike.archives import PACKERS
from conclugen.lookalike.plan import DATASETS, DEFAULT_SIZES, FPS, PLANNERS, Plan
from conclugen.lookalike.render import face_box, layout, placement, render, render_job, speak

log = logging.getLogger("conclugen")


# --- driver -------------------------------------------------------------------------------------


def _truth(plan: Plan) -> list[dict]:
    rows = []
    for video in plan.videos:
        placements = [placement(video.motion, f) for f in range(video.frames)]
        for s in video.samples:
            shown = [] if s.bad == "no_face" else placements[s.first : s.last]
            rows.append(
                {
                    "sample_id": s.sample_id,
                    "split": s.split,
                    "expression": s.expression,
                    "sentence": s.speech.text,
                    "level": s.level,
                    "bad": s.bad,
                    "fps": float(FPS),
                    "width": video.width,
                    "height": video.height,
                    "start": s.first / FPS,
                    "end": s.last / FPS,
                    "face_boxes": [face_box(p) for p in shown],
                }
            )
    return sorted(rows, key=lambda r: r["sample_id"])


def resolve_sizes(datasets: Sequence[str], sizes: Mapping | None) -> dict[str, dict]:
    """:data:`DEFAULT_SIZES` overlaid with ``sizes``, checked; raises ValueError on a bad entry."""
    unknown = set(datasets) - set(DATASETS) or set(sizes or {}) - set(DATASETS)
    if unknown:
        raise ValueError(f"unknown datasets {sorted(unknown)}; known: {DATASETS}")
    resolved = {}
    for name in datasets:
        given = dict((sizes or {}).get(name) or {})
        extra = set(given) - set(DEFAULT_SIZES[name])
        if extra:
            raise ValueError(f"sizes.{name}: unknown keys {sorted(extra)}")
        size = {**DEFAULT_SIZES[name], **given}
        for key, value in size.items():
            values = value if key == "segments_per_video" else [value]
            if not all(isinstance(v, int) and v >= 1 for v in values):
                raise ValueError(f"sizes.{name}.{key}: want integers >= 1, got {value!r}")
        if name == "mosei":
            low_high = size["segments_per_video"]
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise ValueError(f"sizes.mosei.segments_per_video: want [min, max], got {low_high}")
            if size["videos"] < 3:
                raise ValueError("sizes.mosei.videos: want >= 3 (one video per standard fold)")
        resolved[name] = size
    return resolved


@contextmanager
def _mapper(workers: int) -> Iterator[Callable]:
    """``map`` over a pool of ``workers`` processes (in-process for one worker)."""
    if workers <= 1:
        yield lambda fn, items: list(map(fn, items))
        return
    # fork: workers start fast and need not re-import the caller (a Snakemake script has no
    # main guard, which spawn would re-run).
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield lambda fn, items: list(pool.map(fn, items))


def _generate_one(
    out: Path,
    name: str,
    seed: int,
    bad_fraction: float,
    size: dict,
    clip_seconds: tuple[float, float],
    map_: Callable,
) -> None:
    rng = random.Random(f"conclugen-lookalike/{name}/{seed}")
    low, high = clip_seconds
    plan = PLANNERS[name](rng, size, lambda r: round(r.uniform(low, high) * FPS), bad_fraction)
    everything = plan.videos + plan.extras
    speeches = list(dict.fromkeys(s.speech for v in everything for s in v.samples))
    speech_audio = dict(zip(speeches, map_(speak, speeches), strict=True))
    lengths = {speech: len(audio) for speech, audio in speech_audio.items()}
    for video in everything:
        layout(video, lengths)
    # The whole dataset folder appears at once, complete, replacing any earlier one.
    with atomic_path(out) as tmp:
        media = tmp / ".staging" / "media"
        media.mkdir(parents=True)
        map_(render, [render_job(v, speech_audio, media) for v in everything])
        PACKERS[name](tmp, media, plan, size)
        shutil.rmtree(tmp / ".staging")
        settings = {
            "seed": seed,
            "bad_fraction": bad_fraction,
            "size": size,
            "clip_seconds": list(clip_seconds),
        }
        write_parquet(
            pd.DataFrame(_truth(plan)),
            tmp / "truth.parquet",
            metadata={"dataset": name, "lookalike": json.dumps(settings)},
        )


def generate(
    root,
    datasets: Sequence[str] = DATASETS,
    seed: int = 0,
    bad_fraction: float = 0.08,
    sizes: Mapping | None = None,
    clip_seconds: tuple[float, float] = (2.0, 3.5),
    workers: int = 2,
) -> None:
    """Write each of ``datasets`` under ``{root}/{dataset}/`` in its real form, plus its
    ``truth.parquet``.

    ``seed`` fixes every draw; ``bad_fraction`` (0..1) of the clips get a bad kind; ``sizes``
    overlays :data:`DEFAULT_SIZES` (keys in the module docstring); clips last ``clip_seconds``
    (min, max) or as long as their sentence needs; ``workers`` processes speak and render.
    A dataset's folder is replaced as a whole, only once it is complete.
    """
    resolved = resolve_sizes(datasets, sizes)
    low, high = clip_seconds
    if not 0 < low <= high:
        raise ValueError(f"clip_seconds: want 0 < min <= max, got {clip_seconds}")
    if not 0 <= bad_fraction <= 1:
        raise ValueError(f"bad_fraction: want 0..1, got {bad_fraction}")
    with _mapper(workers) as map_:
        for name in datasets:
            started = time.monotonic()
            _generate_one(
                Path(root) / name, name, seed, bad_fraction, resolved[name], (low, high), map_
            )
            log.info("lookalike %s: written in %.1f s", name, time.monotonic() - started)
