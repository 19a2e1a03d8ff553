"""Design probes of the glyphs test bed (benchmarks/results/testbed/design_probes.md): evaluate.py's baselines
(raw pixels, the randomly initialized encoder) and a short simclr run, on the glyphs images made with a
given STYLE (glyphs.py), with the wall time of each. One thread (the machine is shared).

    python benchmarks/testbed_probes.py --style '{"palette": 8}' --epochs 3 [--no-raw-probe] [--output-dir D]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from synthcl_fast.trainer import glyphs
from synthcl_fast.trainer.config import TrainConfig
from synthcl_fast.trainer.data import load_data
from synthcl_fast.trainer.evaluate import (evaluate, feature_metrics, knn_accuracy, random_encoder,
                                           raw_pixel_metrics)
from synthcl_fast.trainer.loop import Trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--style", default="{}", help="JSON changes to glyphs.STYLE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=0, help="simclr epochs (0: baselines only)")
    parser.add_argument("--no-raw-probe", action="store_true", help="raw pixels: 5-NN only (the probe is slow)")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--eval-every", type=int, default=0, help="epochs between evaluations (0: the last only)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    glyphs.STYLE.update(json.loads(args.style))
    print("STYLE", json.dumps(glyphs.STYLE), flush=True)
    config = TrainConfig(method="simclr", dataset="glyphs", seed=args.seed, device="cpu", epochs=max(args.epochs, 1),
                         eval_every=args.eval_every or max(args.epochs, 1))
    start = time.perf_counter()
    data = load_data(config)
    print(f"load_data: {time.perf_counter() - start:.1f} s", flush=True)
    start = time.perf_counter()
    if args.no_raw_probe:
        raw = {"knn_acc": knn_accuracy(data.train_images.flatten(1).numpy(), data.train_labels.numpy(),
                                       data.test_images.flatten(1).numpy(), data.test_labels.numpy(), 5)}
        raw["k"] = 5
    else:
        raw = raw_pixel_metrics(data, config.knn_k)
        raw["knn5_acc"] = knn_accuracy(data.train_images.flatten(1).numpy(), data.train_labels.numpy(),
                                       data.test_images.flatten(1).numpy(), data.test_labels.numpy(), 5)
    print("raw-pixels", json.dumps(raw | {"seconds": round(time.perf_counter() - start, 1)}), flush=True)
    start = time.perf_counter()
    metrics = evaluate(random_encoder(config, data.channels), data, torch.device("cpu"), config.knn_k)
    print("random-encoder", json.dumps(metrics | {"seconds": round(time.perf_counter() - start, 1)}), flush=True)
    if args.epochs:
        run_dir = args.output_dir or tempfile.mkdtemp(prefix="testbed-probe-")
        start = time.perf_counter()
        trainer = Trainer.new(config, run_dir, progress=False)
        result = trainer.fit()
        print(f"simclr {trainer.global_step} steps", json.dumps(
            {k: result.history[-1].get(k) for k in ("probe_acc", "few_label_acc", "knn_acc")}
            | {"curve": [(r["step"], r.get("probe_acc"), r.get("knn_acc")) for r in result.history if r.get("probe_acc")]}
            | {"train_seconds": round(result.seconds, 1), "seconds": round(time.perf_counter() - start, 1)}),
            flush=True)


if __name__ == "__main__":
    main()
