"""``conclugen predict VIDEO...``: an exported model's class probabilities for videos of your own.

Each video goes through the pipeline's stages as one clip: the probe (:func:`conclugen.media.
probe`: any container PyAV reads, rotation honoured), the MTCNN face track when the model's
dataset was face-cropped (:func:`conclugen.faces.face_tracks`, its ``no_face`` policy), Whisper
subtitles (:func:`conclugen.subtitles.subtitles_shard`; always, since a user's video brings no
transcript), the four backbones (:func:`conclugen.features.extract_shard`), for a model that
reads keypoints (MPUC's) the keypoint feature of the face track's landmarks
(:func:`conclugen.keypoints.keypoint_features`), then the exported classifier
(:func:`conclugen.export.load`). Every setting comes from the export's ``config.json``; the
weights are read offline from the caches and paths the pipeline's jobs use
(:data:`conclugen.weights.OFFLINE_ENV`; relative paths are the working directory's).

``--timeline`` scores windows of about :data:`TIMELINE_S` seconds along the video (equal
windows covering it, each a clip of its own, as the pipeline would cut one) and writes
``<name>.timeline.csv`` (start, end, one probability per class) and ``<name>.timeline.png``
(probability per class over time, the face crop of each window's middle under it) into
``--out``. A file that is not a usable video, or a clip the stages drop (no face found), gets
its error on stderr and the exit status 1; the other videos are still processed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from conclugen import backbones
from conclugen.config import weights_key
from conclugen.export import ExportedModel, load
from conclugen.features import ROLES, VIDEO_ROLES, extract_shard
from conclugen.keypoints import keypoint_features
from conclugen.ledger import FailureLedger
from conclugen.media import FPS, MediaError, probe, read_frames, sample_times
from conclugen.subtitles import configured_transcriber, subtitles_shard
from conclugen.torchutil import resolve_device, resolve_precision
from conclugen.weights import OFFLINE_ENV

DEFAULT_MODEL = "results/export/caer/conclugen"
TIMELINE_S = 4.0  # seconds per timeline window (the look-alike clips last 2-3.5 s)
THUMBNAILS = 12  # at most this many face crops under the timeline
LOADERS = {
    "video2d": backbones.load_resnet2d,
    "video3d": backbones.load_resnet3d,
    "audio": backbones.load_davenet,
    "text": backbones.load_text_encoder,
}


class PredictError(Exception):
    """A video that cannot be scored; the message says why."""


@dataclass
class Prediction:
    """One video's result: probabilities [W, C] over its windows (one window without
    ``--timeline``), each window's (start, end) in seconds, and its face track boxes."""

    video: str
    windows: list[tuple[float, float]]
    probabilities: np.ndarray
    track: np.ndarray | None = None  # [T, 4] on the 16 fps grid, None without face crops
    files: dict[str, str] = field(default_factory=dict)

    def clip_probabilities(self) -> np.ndarray:
        """[C]: the whole video's (a timeline's windows averaged, weighted by length)."""
        lengths = np.array([b - a for a, b in self.windows])
        return (self.probabilities * lengths[:, None]).sum(0) / lengths.sum()


def timeline_windows(duration: float, seconds: float = TIMELINE_S) -> list[tuple[float, float]]:
    """Equal windows of about ``seconds`` covering ``[0, duration)`` (at least one)."""
    n = max(1, round(duration / seconds))
    edges = np.linspace(0.0, duration, n + 1)
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class Predictor:
    """The stages of the pipeline, loaded once, for an exported model."""

    def __init__(self, model: ExportedModel, device: str = "auto", say=lambda text: None):
        self.model, self.config, self.say = model, model.config, say
        self.device = resolve_device(device)
        self.roles = [*ROLES, *(["keypoints"] if "keypoints" in self.config["modalities"] else [])]
        feats = self.config["features"]
        say("loading the backbones")
        self.backbones = {role: LOADERS[role](feats[role][weights_key(role)]) for role in ROLES}
        self.mtcnn = None
        if self.config["faces"]["cropped"]:
            from conclugen.faces import load_mtcnn

            self.mtcnn = load_mtcnn(self.device, self.config["faces"]["min_face_size"])
        say("loading Whisper")
        self.transcriber = configured_transcriber(
            self.config["subtitles"], self.device, torch.get_num_threads()
        )

    def __call__(self, path: str | os.PathLike, timeline: bool = False) -> Prediction:
        name = Path(path).name
        self.say(f"{name}: probe")
        try:
            info = probe(path)
        except MediaError as e:
            raise PredictError(f"not a usable video: {e}") from None
        spans = timeline_windows(info.duration) if timeline else [(0.0, info.duration)]
        clip = dict(video=str(path), audio=None, split="test", duration=info.duration,
                    width=info.width, height=info.height, fps=info.fps,
                    has_audio=info.has_audio, audio_peak=info.audio_peak)  # fmt: skip
        ids = [f"w{i:05d}" for i in range(len(spans))]
        clips = pd.DataFrame(
            [dict(clip, sample_id=i, start=a, end=b) for i, (a, b) in zip(ids, spans, strict=True)]
        )
        ledger = FailureLedger("predict")
        face, track, boxes = None, None, {}
        if self.mtcnn is not None:
            self.say(f"{name}: faces")
            face = self._track(clip, ledger)
            track = face.track
            boxes = {i: track[round(a * FPS) :] for i, (a, _) in zip(ids, spans, strict=True)}
        self.say(f"{name}: Whisper subtitles")
        clips = self._subtitles(clips, ledger)
        x, present = {}, {}
        for role in self.roles:
            self.say(f"{name}: {role} features")
            if role == "keypoints":
                shard = keypoint_features(clips, window_faces(face, ids, spans), ledger)
            else:
                shard = self._features(role, clips, boxes, ledger)
            rows = pd.Index(shard.sample_id).get_indexer(ids)
            if role in VIDEO_ROLES and (rows < 0).any():
                raise PredictError(f"{role}: {_reason(ledger)}")
            found = rows >= 0  # a clip missing from audio or text: that modality is absent
            x[role] = torch.zeros(len(ids), shard.feature.shape[1])
            x[role][found] = shard.feature[rows[found]]
            present[role] = torch.zeros(len(ids), dtype=torch.bool)
            present[role][found] = shard.present[rows[found]]
        x["video"] = torch.cat([x.pop("video2d"), x.pop("video3d")], 1)
        present["video"] = present.pop("video2d") & present.pop("video3d")
        probabilities = self.model.probabilities(x, present).numpy()
        return Prediction(str(path), spans, probabilities, track)

    def _track(self, clip: dict, ledger: FailureLedger):
        """The whole video's :class:`conclugen.faces.FaceTrack` on the 16 fps grid (``track``:
        the smoothed box the crops follow), or :class:`PredictError`."""
        from conclugen.faces import face_tracks

        cfg = self.config["faces"]
        whole = pd.DataFrame([dict(clip, sample_id="video", start=0.0, end=clip["duration"])])
        options = {k: cfg[k] for k in ("detect_every", "batch_frames", "smooth", "no_face")}
        tracks = list(face_tracks(self.mtcnn, whole, ledger, workers=0, **options))
        if not tracks:
            raise PredictError(f"faces: {_reason(ledger)}")
        return tracks[0]

    def _subtitles(self, clips: pd.DataFrame, ledger: FailureLedger) -> pd.DataFrame:
        cfg = self.config["subtitles"]
        pack = cfg.get("pack", True)  # a model exported before `pack` existed
        table = subtitles_shard(clips, self.transcriber, ledger, cfg["batch_size"], cfg["vad"],
                                pack)  # fmt: skip
        return clips.assign(text=clips["sample_id"].map(table.set_index("sample_id")["text"]))

    def _features(self, role: str, clips: pd.DataFrame, boxes: dict, ledger: FailureLedger):
        feats = self.config["features"]
        precision = "fp32" if role == "text" else resolve_precision(feats["precision"], self.device)
        return extract_shard(
            role, clips, self.backbones[role], ledger, device=self.device,
            batch_size=feats[role]["batch_size"], workers=0, boxes=boxes,
            crop_size=feats["crop_size"], mean=feats[role].get("mean"),
            std=feats[role].get("std"), precision=precision,
        )  # fmt: skip


def window_faces(face, ids: list[str], spans: list[tuple[float, float]]) -> pd.DataFrame:
    """The rows of the whole video's face track ``face`` that fall in each window ``(a, b)``,
    as the faces stage stores a clip of those seconds: ``sample_id`` the window's id, frames
    counted from the window's start (the frames :func:`conclugen.media.sample_times` gives it)."""
    whole = face.to_frame()
    parts = []
    for sample_id, (a, b) in zip(ids, spans, strict=True):
        first = round(a * FPS)
        rows = whole.iloc[first : first + len(sample_times(a, b, FPS))]
        parts.append(rows.assign(sample_id=sample_id, frame=np.arange(len(rows), dtype=np.int32)))
    return pd.concat(parts, ignore_index=True)


def _reason(ledger: FailureLedger) -> str:
    """The first reason a stage dropped the clip for."""
    return next((r[2] for r in ledger.rows if r[3] == "dropped"), "no features")


# ---------------------------------------------------------------------------------------------
# Output


def ranked(classes: list[str], probabilities: np.ndarray) -> dict[str, float]:
    """Class -> probability, most probable first."""
    order = np.argsort(-probabilities, kind="stable")
    return {classes[i]: round(float(probabilities[i]), 6) for i in order}


def summary(prediction: Prediction, model: ExportedModel) -> dict:
    """A video's result as ``--json`` prints it."""
    probs = prediction.clip_probabilities()
    if model.multilabel:
        predicted = [c for c, p in zip(model.classes, probs, strict=True) if p > 0.5]
    else:
        predicted = model.classes[int(probs.argmax())]
    return dict(
        video=prediction.video,
        probabilities=ranked(model.classes, probs),
        predicted=predicted,
        windows=len(prediction.windows),
        **prediction.files,
    )


def write_timeline(prediction: Prediction, classes: list[str], out_dir: Path) -> dict[str, str]:
    """``<name>.timeline.csv`` and ``.png`` of a timeline prediction in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(prediction.video).stem
    starts, ends = (np.array(x) for x in zip(*prediction.windows, strict=True))
    table = pd.DataFrame({"start": starts, "end": ends})
    for j, c in enumerate(classes):
        table[c] = prediction.probabilities[:, j]
    csv = out_dir / f"{stem}.timeline.csv"
    table.to_csv(csv, index=False, float_format="%.6f")

    picks = np.unique(np.linspace(0, len(starts) - 1, min(THUMBNAILS, len(starts))).astype(int))
    middles = (starts[picks] + ends[picks]) / 2
    frames, _ = read_frames(prediction.video, middles)
    fig = plt.figure(figsize=(10, 5.5), layout="constrained")
    grid = fig.add_gridspec(2, len(picks), height_ratios=[4, 1])
    ax = fig.add_subplot(grid[0, :])
    centres = (starts + ends) / 2
    for j, c in enumerate(classes):
        ax.plot(centres, prediction.probabilities[:, j], marker="o", label=c)
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), xlim=(0, ends[-1]),
           title=Path(prediction.video).name)  # fmt: skip
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    for k, (frame, t) in enumerate(zip(frames, middles, strict=True)):
        thumb = fig.add_subplot(grid[1, k])
        thumb.imshow(_crop(frame, prediction.track, t))
        thumb.set_title(f"{t:.1f} s", fontsize="x-small")
        thumb.axis("off")
    png = out_dir / f"{stem}.timeline.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return {"timeline_csv": str(csv), "timeline_png": str(png)}


def _crop(frame: np.ndarray, track: np.ndarray | None, t: float) -> np.ndarray:
    """The face box of the track at time ``t`` (the whole frame without a track)."""
    if track is None:
        return frame
    x1, y1, x2, y2 = track[min(int(t * FPS), len(track) - 1)]
    h, w = frame.shape[:2]
    x1, x2 = (int(np.clip(v, 0, w)) for v in (math.floor(x1), math.ceil(x2)))
    y1, y2 = (int(np.clip(v, 0, h)) for v in (math.floor(y1), math.ceil(y2)))
    return frame[y1:y2, x1:x2] if x2 > x1 and y2 > y1 else frame


def show(result: dict) -> str:
    """A video's result as text: its name, then each class and probability, most probable
    first."""
    lines = [result["video"]]
    width = max(map(len, result["probabilities"]))
    for c, p in result["probabilities"].items():
        lines.append(f"  {c:<{width}}  {p:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """The ``conclugen`` command (its one subcommand: ``predict``); returns the exit status:
    0, or 1 when a video could not be scored."""
    parser = argparse.ArgumentParser(
        prog="conclugen", description="ConCluGen: emotions of your videos"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("predict", help="class probabilities of videos")
    p.add_argument("videos", nargs="+", metavar="VIDEO")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"export folder ({DEFAULT_MODEL})")
    p.add_argument(
        "--timeline", action="store_true", help=f"score {TIMELINE_S:g}-s windows: CSV and PNG"
    )
    p.add_argument("--out", default=".", help="folder of the timeline files (default: .)")
    p.add_argument("--json", action="store_true", help="one JSON list on stdout")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    args = parser.parse_args(argv)

    os.environ.update(OFFLINE_ENV)  # weights from the caches only, as in every pipeline job
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("conclugen: %(message)s"))
    logger = logging.getLogger("conclugen")
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)  # the stages' ledger lines: the error message says it

    def say(text: str) -> None:
        print(f"[conclugen predict] {text}", file=sys.stderr, flush=True)

    try:
        model = load(args.model)
    except (OSError, ValueError) as e:
        print(f"conclugen predict: cannot load the model {args.model}: {e}", file=sys.stderr)
        return 2
    predictor = Predictor(model, args.device, say)
    results, status = [], 0
    for n, video in enumerate(args.videos, 1):
        say(f"video {n}/{len(args.videos)}: {video}")
        try:
            prediction = predictor(video, args.timeline)
        except PredictError as e:
            print(f"conclugen predict: {video}: {e}", file=sys.stderr, flush=True)
            results.append(dict(video=video, error=str(e)))
            status = 1
            continue
        if args.timeline:
            prediction.files = write_timeline(prediction, model.classes, Path(args.out))
        results.append(summary(prediction, model))
        if not args.json:
            print(show(results[-1]), flush=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
