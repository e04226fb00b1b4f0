"""Pretraining throughput at the paper's sizes, resident features vs. a per-sample DataLoader.

Trains the same model (4096-d representations, inputs video 4096 / audio 1024 / text 768, batch
4096, all loss terms on) for one epoch over synthetic features in two ways, in one process:

- resident: the whole feature set on the device (float16, as read from features.zarr), batches
  gathered with index tensors from a seeded permutation (what conclugen.pretrain does);
- DataLoader: a per-sample ``torch.utils.data.Dataset`` over float32 host tensors, default
  collate, batch 4096, each batch copied to the device (the usual PyTorch recipe).

Prints samples/s and seconds per epoch for both, their ratio, the data-feeding time alone, and
the projected time of an epoch over 1 M samples.

``--precisions fp32 bf16`` instead times ``--steps`` resident steps in each precision (forced,
whatever ``auto`` would pick: conclugen.torchutil.resolve_precision, printed too) from the same
initialisation, and prints seconds per step and the fp32 / bf16 ratio, and each precision's
last loss. Usage::

    python benchmarks/pretrain_throughput.py [--samples 8192] [--device cpu|cuda] [--method M]
        [--precisions fp32 bf16 [--steps 3]]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from conclugen.featstore import PAPER_DIMS
from conclugen.pretrain import (
    build_model,
    make_batch,
    method_config,
    resolve_hparams,
    sample_views,
    train_step,
)
from conclugen.torchutil import cpu_flags, resolve_precision

# The synthetic features are the tests' (tests/synthetic.py), under the repository's root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.synthetic import synthetic_features  # noqa: E402


def bf16_flags() -> list[str]:
    """The CPU flags that bear on bf16: AMX tiles and AVX-512 BF16."""
    return sorted(f for f in cpu_flags() if f.startswith("amx") or f == "avx512_bf16")


class PerSample(Dataset):
    """One sample per ``__getitem__``: a dict of modality rows (plus two views for InfoNCE)."""

    def __init__(self, features: dict[str, torch.Tensor], views, gen):
        self.features, self.views, self.gen = features, views, gen

    def __len__(self):
        return len(next(iter(self.features.values())))

    def __getitem__(self, i):
        item = {m: x[i] for m, x in self.features.items()}
        if self.views is not None:
            item["views"] = tuple(
                v[0] for v in sample_views(self.views, torch.tensor([i]), self.gen)
            )
        return item


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=8192, help="training samples (default 8192)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--method", default="conclugen")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    ap.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    method = method_config(args.method)
    hp = resolve_hparams(dict(batch_size=args.batch_size, cluster_start_epoch=0))
    terms = list(method["terms"])
    n_views = 2 if "infonce" in terms else 0
    fs = synthetic_features(args.samples, PAPER_DIMS, seed=0, views=n_views)
    host = {m: fs.features[m] for m in method["modalities"]}
    resident = {m: x.half().to(device) for m, x in host.items()}
    host_views = fs.views
    views = None if fs.views is None else fs.views.half().to(device)
    torch.manual_seed(0)
    model = build_model(method, hp, fs.dims).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=method["lr"],
        weight_decay=method["weight_decay"],
        fused=device.type == "cuda",
    )
    gen = torch.Generator().manual_seed(0)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}{threads}); method {args.method} {terms}; {params:.0f} M params")
    print(
        f"{args.samples} samples, batch {args.batch_size}, dims {PAPER_DIMS}, rep {hp['rep_dim']}"
    )

    def step(batch, hp=hp):
        queue: list[torch.Tensor] = []  # k-means over the current batch: same cost both ways
        return train_step(model, optimizer, batch, method, hp, terms, queue, gen)

    def resident_batches():
        perm = torch.randperm(args.samples, generator=gen).to(device)
        for idx in perm.split(args.batch_size):
            yield make_batch(resident, views, idx, method, gen)

    loader = DataLoader(
        PerSample(host, host_views, gen), batch_size=args.batch_size, shuffle=True, generator=gen
    )

    def loader_batches():
        for batch in loader:
            out = {m: batch[m].to(device, non_blocking=True) for m in method["modalities"]}
            if "views" in batch:
                out["views"] = tuple(v.to(device) for v in batch["views"])
            yield out

    def timed(batches, train: bool) -> float:
        sync(device)
        t0 = time.perf_counter()
        for batch in batches:
            if train:
                step(batch)
        sync(device)
        return time.perf_counter() - t0

    if args.precisions:
        auto = resolve_precision("auto", device)
        print(f"precision auto -> {auto} here (cpu flags: {' '.join(bf16_flags()) or 'none'})")
        initial = copy.deepcopy(model.state_dict())
        per_step = {}
        for precision in args.precisions:
            model.load_state_dict(initial)
            optimizer.state.clear()
            hp_p = dict(hp, precision=precision)
            batch = next(resident_batches())
            for _ in range(args.warmup):
                step(batch, hp_p)
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                out = step(batch, hp_p)
            sync(device)
            per_step[precision] = (time.perf_counter() - t0) / args.steps
            print(f"{precision}: {per_step[precision]:8.3f} s/step, loss {out['total'].item():.4f}")
        if {"fp32", "bf16"} <= set(per_step):
            print(f"ratio fp32 / bf16 step time: {per_step['fp32'] / per_step['bf16']:.2f}x")
        return

    for _ in range(args.warmup):
        step(next(resident_batches()))
    feed_resident = timed(resident_batches(), train=False)
    feed_loader = timed(loader_batches(), train=False)
    t_resident = timed(resident_batches(), train=True)
    t_loader = timed(loader_batches(), train=True)

    for label, seconds in (
        ("resident + index batches", t_resident),
        ("per-sample DataLoader", t_loader),
    ):
        rate = args.samples / seconds
        print(
            f"{label:<25}: {rate:9.1f} samples/s, {seconds:8.2f} s/epoch "
            f"({1e6 / rate:9.1f} s per epoch of 1 M samples)"
        )
    print(f"ratio resident / DataLoader (samples/s): {t_loader / t_resident:.2f}x")
    print(
        f"data feeding alone, one epoch: resident {feed_resident:.3f} s, "
        f"DataLoader {feed_loader:.3f} s ({feed_loader / max(feed_resident, 1e-9):.0f}x)"
    )


if __name__ == "__main__":
    main()
