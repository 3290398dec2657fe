"""Where does each block's CLS attention look? The localisation profile of trained models.

    python bench/localisation.py --models 'runs/default/best.pt' --out bench/results/localisation_cpu.json

For every checkpoint and split (validation for decisions, test read once), every block and
head: the normalised entropy of the CLS attention over the patches and its mass on the
part (head) box and on the object box, beside the boxes' area share, which is the mass a
map without spatial information would put there (``fgnb.localisation``). Chapter 3 draws
it; the module issue uses it to pick the block whose attention drives the crop.
"""
from __future__ import annotations

import argparse
import glob
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import command_line, git_commit, machine_info, utc_now, write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="checkpoints (glob patterns)")
    p.add_argument("--splits", nargs="+", default=["val", "test"], choices=["val", "test"])
    p.add_argument("--limit", type=int, help="images per split (default: all)")
    p.add_argument("--out", default="bench/results/localisation_cpu.json")
    p.add_argument("--threads", type=int, help="torch threads")
    args = p.parse_args(argv)

    import torch

    from fgnb.localisation import localisation_profile
    from fgnb.checkpoints import load_model
    from fgnb.loaders import dataset_for, eval_loader, normalisation

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = [pathlib.Path(h) for pat in args.models for h in sorted(glob.glob(pat))]
    if not paths:
        raise SystemExit(f"no checkpoint matches {args.models}")
    t0, started = time.perf_counter(), utc_now()
    rows = []
    for path in paths:
        model, cfg, state = load_model(path)
        mean, std = normalisation(cfg.model)
        scfg = cfg.replace(workers=0, batch_size=50)
        for split in args.splits:
            loader = eval_loader(dataset_for(scfg, split, mean, std), scfg, 0)
            prof = localisation_profile(model, loader, limit=args.limit)
            rows.append({"model": str(path), "split": split, "model_name": cfg.model, "img_size": cfg.img_size,
                         "patch_size": cfg.patch_size, "strategy": cfg.strategy, "crop": cfg.crop, "seed": cfg.seed,
                         "best_epoch": state.get("best_epoch"), **prof})
            ent = [round(sum(h) / len(h), 2) for h in prof["entropy"]]
            mp = [round(sum(h) / len(h), 2) for h in prof["mass_part"]] if prof["mass_part"] else None
            print(f"{path} {split}: entropy per block {ent}; mass on the part box {mp} "
                  f"(area share {prof['share_part']:.3f})", flush=True)
    write_json(args.out, {
        "kind": "localisation", "schema": 1, "command": command_line(), **git_commit(ignore=[args.out]),
        "machine": machine_info(), "started": started, "finished": utc_now(),
        "wall_time_s": round(time.perf_counter() - t0, 1), "rows": rows,
        "notes": "entropy: normalised entropy of each block's and head's CLS attention over the patches (0 one patch, "
                 "1 flat); mass_part / mass_object: attention mass on the patches whose centre lies in the part / object "
                 "box; share_part / share_object: the boxes' share of the patches, the mass of a flat map",
    })
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
