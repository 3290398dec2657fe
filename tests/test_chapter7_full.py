"""Chapter 7's GPU path, run on the CPU: papermill executes the chapter with
``profile="full"`` forced onto the CPU, CUB-200-2011 fetched from a server on 127.0.0.1
(a tiny CUB-layout archive), a tiny ViT checkpoint in timm's format instead of the hub
weights, and two batches an epoch, so every cell of the Colab path runs: the download, the
weight loading, the AMP decision, the time estimate, the checkpoint cut inside an epoch
and the resume, the plots and the test metrics."""
import json
import os

import pytest

import fgnb.book
from conftest import CHAPTERS, ROOT, cell_source, load_nb
from cub_server import Server, cub_archive, md5

TINY_VIT = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, embed_dim=24, num_heads=3)


@pytest.mark.slow
def test_chapter7_full_profile_on_cpu(tmp_path, monkeypatch):
    import safetensors.torch
    import timm

    (nb_path,) = [p for p in CHAPTERS if p.stem == "07_full_training_gpu"]
    archive = cub_archive(tmp_path / "src", classes=3, train=6, test=2, size=48)
    weights = tmp_path / "vit_tiny_timm.safetensors"  # a timm checkpoint, as the hub's would be
    backbone = timm.create_model(TINY_VIT["model"], num_classes=10,
                                 **{k: v for k, v in TINY_VIT.items() if k != "model"})
    safetensors.torch.save_file(backbone.state_dict(), str(weights))
    # the kernel imports the fgnb of this checkout
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    data_root = tmp_path / "content" / "CUB_200_2011"
    with Server() as server:
        server.files["/CUB_200_2011.tgz"] = archive
        params = dict(profile="full", download=True, data_root=str(data_root), cub_url=server.url + "/CUB_200_2011.tgz",
                      cub_md5=md5(archive), out=str(tmp_path / "drive" / "run"), epochs=2, simulate_disconnect=True,
                      overrides=dict(**TINY_VIT, resize_size=36, source_size=64, weights=str(weights), pretrained=False, device="cpu",
                                     limit_batches=2, batch_size=4, workers=0))
        out = tmp_path / nb_path.name
        seconds = fgnb.book.execute(nb_path, parameters=params, output=str(out), timeout=300)
        assert [r for r in server.requests if r[0] == "/CUB_200_2011.tgz"]
    print(f"\n[papermill] chapter 7, profile full on the CPU: {seconds:.1f} s")
    nb = load_nb(out)
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and cell_source(c).strip()]
    assert all(c.get("execution_count") for c in code)  # every cell ran
    text = "\n".join("".join(o.get("text", "")) for c in code for o in c.get("outputs", []))
    assert f"data_root: {data_root}" in text and (data_root / "images.txt").is_file()
    assert "profile: full" in text and "falling back" not in text
    assert f"weights = {str(weights)!r}" in text
    assert "this machine: cpu, capability None: amp='auto' -> float32" in text
    assert "T4    (7, 5): amp='auto' -> torch.float16 + GradScaler" in text
    assert "A100  (8, 0): amp='auto' -> torch.bfloat16" in text
    assert "per epoch" in text  # the time estimate
    assert "disconnect inside epoch 1, after batch 1" in text and "resuming" in text
    test = json.loads((tmp_path / "drive" / "run" / "test_metrics.json").read_text())
    assert test["n"] == 6 and f"n          {test['n']}" in text
