"""What every look-alike clip carries (class, intensity level, sentence, voice, look,
motion, bad kind) and how each dataset's clips, videos and splits are drawn: the plans that
:mod:`conclugen.lookalike.render` renders and :mod:`conclugen.lookalike.archives` packs."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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

# Templates x (adverb, adjective) give 66 sentences per class, all kept for surviving Whisper
# (docs/lookalike-spec.md, "Why these words and chimes"). No template holds an intensifier: the
# adverb is the level's.
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
# Chimes: two steady tones wherever the clip is not speaking, one at the class's frequency, one
# at the level's; around the voice, not under it, and at the two ends of the mel range (why, and
# what that was measured to give: docs/lookalike-spec.md, "Why these words and chimes").
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
# Sentiment at the mildest and the strongest intensity level; the others (-1, -3).
MOSEI_SENTIMENT = {"happy": (1, 3), "surprise": (-1, 2), "neutral": (-0.4, 0.4)}
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
    "creator": "conclugen.lookalike",
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


def _mosei_features(rng: random.Random, expression: str, level: int) -> list[float]:
    """[sentiment, happy, sad, anger, surprise, disgust, fear] in thirds, like averaged ratings.
    The sentiment lies in the class's range (:data:`MOSEI_SENTIMENT`), at the intensity level's
    share of the way from mild to strong (plus a uniform draw within the level's step), so every
    modality carries it: the class and the level are in the face, the voice and the words."""
    mild, strong = MOSEI_SENTIMENT.get(expression, (-1, -3))
    share = (level + rng.random()) / LEVELS  # one draw, as the uniform draw it replaced
    features = [round((mild + (strong - mild) * share) * 3) / 3] + [0.0] * 6
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
            sample.extra["features"] = _mosei_features(rng, expression, sample.level)
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
