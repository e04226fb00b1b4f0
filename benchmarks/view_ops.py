"""Time per frame of the augmented views' image operations (one thread, float frames).

Prints, for frames of ``--size`` squared: the plain crop (``crop_frames`` without views), a
downstream copy (crop and flip) and an Instance-Cont view with every operation on (colour
jitter, grayscale, blur), each as milliseconds per frame over ``--frames`` frames, and the blur
alone through torchvision's ``gaussian_blur`` against :func:`conclugen.features.gaussian_blur`
with their ratio. Usage::

    python benchmarks/view_ops.py [--frames 64] [--size 180] [--source 224] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from conclugen.features import ViewParams, crop_frames, gaussian_blur


def per_frame_ms(fn, frames: int, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat / frames * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=180, help="crop size")
    parser.add_argument("--source", type=int, default=224, help="decoded frame size")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, args.source, args.source, 3), dtype=np.uint8)
    boxes = np.tile([0, 0, args.source, args.source], (args.frames, 1)).astype(np.float32)
    copy = ViewParams((0.05, 0.05, 0.9, 0.9), True, None, False, None)
    jitter = (("brightness", 1.3), ("contrast", 0.8), ("saturation", 1.2), ("hue", 0.1))
    view = ViewParams((0.1, 0.2, 0.6, 0.7), True, jitter, True, 1.5)
    n, r = args.frames, args.repeat
    plain = per_frame_ms(lambda: crop_frames(frames, boxes, args.size), n, r)
    with_copy = per_frame_ms(lambda: crop_frames(frames, boxes, args.size, [copy]), n, r)
    with_view = per_frame_ms(lambda: crop_frames(frames, boxes, args.size, [view]), n, r)
    x = torch.rand(n, 3, args.size, args.size)
    k = int(0.1 * args.size) // 2 * 2 + 1
    tv = per_frame_ms(lambda: F.gaussian_blur(x, [k, k], [1.5, 1.5]), n, r)
    ours = per_frame_ms(lambda: gaussian_blur(x, k, 1.5), n, r)
    print(f"{n} frames {args.source}x{args.source} -> {args.size}x{args.size}, 1 thread")
    print(f"plain crop                     {plain:6.2f} ms/frame")
    print(f"+ downstream copy (crop, flip) {with_copy - plain:6.2f} ms/frame")
    print(f"+ Instance-Cont view (all ops) {with_view - plain:6.2f} ms/frame")
    print(f"blur {k}x{k}: torchvision {tv:.2f} ms/frame, ours {ours:.2f} ms/frame, "
          f"ratio {tv / ours:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
