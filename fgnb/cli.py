"""``python -m fgnb`` / ``fgnb``: train, evaluate, predict.

    python -m fgnb train                       # embedded data, small ViT, CPU, minutes
    python -m fgnb train --config configs/cub_vitb16_448.yaml --data-root CUB_200_2011
    python -m fgnb evaluate runs/default/best.pt
    python -m fgnb predict runs/default/best.pt bird.jpg --top-k 5
    python -m fgnb export runs/default/best.pt backbone.safetensors   # timm weights
    python -m fgnb plan --config bench/configs/cub_vitb16_448.yaml    # GPU memory, before the run
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from .config import ConfigError, add_config_arguments, config_from_args

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fgnb", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a model (every option below has a default)")
    add_config_arguments(t)
    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a split: every head, every inference mode, localization")
    e.add_argument("checkpoint")
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--data-root", default=None, help="dataset folder if it moved since training")
    e.add_argument("--device", default="auto")
    e.add_argument("--json", dest="json_out", default=None, help="also write the metrics to this JSON file")
    pr = sub.add_parser("predict", help="top-k classes of images and an attention/crop overlay PNG each")
    pr.add_argument("checkpoint")
    pr.add_argument("images", nargs="+")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--out-dir", default=None, help="where the overlay PNGs go (default: next to the checkpoint)")
    pr.add_argument("--device", default="auto")
    pl = sub.add_parser("plan", help="peak GPU memory of a run's step for every strategy x crop x batch, and the "
                                     "cards it fits (fgnb.memory; no GPU needed)")
    add_config_arguments(pl)
    pl.add_argument("--batches", type=int, nargs="+", default=None,
                    help="batch sizes per process to plan (default: the config's batch and twice it; 16 32 for auto)")
    pl.add_argument("--strategies", nargs="+", default=["last", "summed", "progressive"],
                    choices=["last", "summed", "progressive"], help="strategies to plan (default: all three)")
    pl.add_argument("--capability", default="8.0", help="CUDA compute capability of the card, which sets what amp=auto "
                                                        "means: 7.5 (T4) fp16, 8.0 and up bf16 (default 8.0)")
    pl.add_argument("--num-classes", type=int, default=None, help="classes of the data set (default: known for "
                                                                  "cub, aircraft, flowers, pets, synthetic)")
    ex = sub.add_parser("export", help="write a checkpoint's backbone as timm .safetensors weights (loadable with weights=)")
    ex.add_argument("checkpoint")
    ex.add_argument("out", help="the .safetensors file to write")
    return p


def _evaluate(args) -> dict:
    from .checkpoints import load_model
    from .devices import loader_workers, select_device
    from .evaluation import evaluate
    from .loaders import dataset_for, eval_loader

    device = select_device(args.device)
    model, cfg, _ = load_model(args.checkpoint, device)
    if args.data_root:
        cfg = cfg.replace(data_root=args.data_root)
    dc = model.data_config()
    ds = dataset_for(cfg, args.split, dc["mean"], dc["std"])
    res = evaluate(model, eval_loader(ds, cfg, loader_workers(cfg, device.type)), cfg, device, progress=True)
    print(json.dumps(res, indent=2))
    if args.json_out:
        pathlib.Path(args.json_out).write_text(json.dumps(res, indent=2))
    return res


def _predict(args) -> list[dict]:
    from .predict import predict_files

    results = predict_files(args.checkpoint, args.images, top_k=args.top_k, out_dir=args.out_dir, device=args.device)
    for r in results:
        print(r["image"])
        for name, p in r["top"]:
            print(f"  {p:6.3f}  {name}")
        print(f"  overlay: {r['overlay']}")
    return results


def _plan(args) -> list:
    from . import memory

    cfg = config_from_args(args)
    try:
        capability = tuple(int(v) for v in args.capability.split("."))
    except ValueError:
        raise ConfigError(f"--capability {args.capability!r}: give major.minor, e.g. 7.5 or 8.0") from None
    base = cfg.batch_size if cfg.batch_size != "auto" else 16
    batches = sorted(set(args.batches or [base, 2 * base]))
    classes = args.num_classes or memory.num_classes_of(cfg)
    print(f"{cfg.model} at {cfg.img_size} px, {classes} classes, {cfg.optimizer}, amp={cfg.amp} on capability "
          f"{args.capability}; peak GiB per process of a training step (fgnb.memory):\n")
    rows = memory.plan(cfg.replace(batch_size=base), classes, batches, strategies=args.strategies, capability=capability)
    print(memory.format_plan(rows))
    if len(batches) > 1:
        print(f"\nlargest batch per card (the line through batch {batches[0]} and {batches[-1]}):\n")
        print(memory.format_largest(rows))
    print(f"\nfits: peak <= {memory.HEADROOM:.0%} of (card - {memory.CONTEXT_GIB} GiB for the CUDA context)")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .train import train

            from . import distributed

            try:
                res = train(config_from_args(args))
                main_process = distributed.is_main()
            finally:
                distributed.shutdown()
            if res["test"] is not None and main_process:
                print(json.dumps(res["test"], indent=2))
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "plan":
            _plan(args)
        elif args.command == "export":
            from .checkpoints import export_checkpoint

            print(export_checkpoint(args.checkpoint, args.out))
        else:
            _predict(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, OSError, FloatingPointError) as e:
        print(f"fgnb {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
