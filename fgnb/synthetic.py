"""Procedural "stylised birds": a small embedded fine-grained data set.

Chapter 1 ("Fine-grained recognition and the data") explains it.

Every image shows one bird (body ellipse, head, wing, tail, beak, eye) at a
random position, scale (about 10-40 % of the image area), pose (rotation,
horizontal flip) and colour, on a cluttered background (smooth noise, stripes,
distractor shapes, coloured dots). The *class* changes only the head: the
colour of the eye ring, the shape of the beak and whether there is a crest.
Everything else (body/wing/head colour, pose, background) is drawn
independently of the class, so global appearance is shared across classes and
varies within a class. ``difficulty`` (default from the calibration in
``book/dataset.md``) scales the clutter and sensor noise; below 1 it also
enlarges the head and its parts (up to 2x at 0.5).

The set is written to disk in the exact CUB-200-2011 layout (``images/``,
``images.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
``bounding_boxes.txt``, ``classes.txt``, ``parts/part_locs.txt`` with the centres of
the three cues) plus ``part_boxes.txt`` (the box around the discriminative head
region), ``meta.json`` and ``README.txt``, so
the same loader (:class:`fgnb.data.CUBDataset`) reads it and real CUB.
"""
from __future__ import annotations

import functools
import hashlib
import io
import itertools
import json
import math
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "GENERATOR_VERSION", "DEFAULTS", "CLASS_SPECS", "class_specs", "class_names",
    "render", "CUES", "cue_points", "generate", "default_root", "ensure_synthetic", "eye_ring_diameter",
    "eye_ring_diameters", "image_seeds", "RING_RADIUS", "PUPIL_RADIUS", "CUB_SHAPE",
]

GENERATOR_VERSION = 3

#: CUB-200-2011's typical image, width x height (most of its photos are 500 px wide, 4:3 or close)
CUB_SHAPE = (500, 375)

#: Defaults of the calibrated CPU set-up (species 1-10); the record is ``book/dataset.md``.
DEFAULTS = dict(num_classes=10, train_per_class=100, test_per_class=40, size=256,
                seed=0, difficulty=0.5, first_class=0)

# --- class definitions (fixed, independent of the data seed) ----------------
RING_COLOURS = {  # eye-ring colour
    "Red": (220, 30, 30), "Yellow": (235, 215, 20), "Blue": (30, 80, 230),
    "White": (245, 245, 245), "Green": (30, 170, 50),
}
#: outer radius of the eye ring, in canonical units (body half-length = 1), before the part scale
RING_RADIUS = 0.14
#: radius of the black pupil drawn over it: the ring's coloured band is RING_RADIUS - PUPIL_RADIUS wide
PUPIL_RADIUS = 0.065
BEAKS = ("Short", "Long", "Hooked")        # beak shape
CRESTS = ("Plain", "Crested")              # crest on the head or not


def class_specs() -> list[tuple[str, str, str]]:
    """All (ring, beak, crest) combinations in a fixed shuffled order (30)."""
    combos = list(itertools.product(RING_COLOURS, BEAKS, CRESTS))
    order = np.random.default_rng(20240611).permutation(len(combos))
    return [combos[i] for i in order]


CLASS_SPECS = class_specs()
MAX_CLASSES = len(CLASS_SPECS)


def class_names(num_classes: int, first_class: int = 0) -> list[str]:
    """CUB-style directory names ``NNN.Ring_Beak_Crest`` of ``num_classes`` species
    starting at species ``first_class`` (numbered from 001 within the set)."""
    if not 0 <= first_class < MAX_CLASSES:
        raise ValueError(f"first_class must be in 0..{MAX_CLASSES - 1}, got {first_class}")
    if not 1 <= num_classes <= MAX_CLASSES - first_class:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES - first_class} "
                         f"(there are {MAX_CLASSES} species; first_class={first_class}), got {num_classes}")
    return [f"{i + 1:03d}.{r}ringed_{b}billed_{c}" for i, (r, b, c)
            in enumerate(CLASS_SPECS[first_class:first_class + num_classes])]


# --- geometry helpers --------------------------------------------------------
def _ellipse(cx, cy, rx, ry, n=40):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _palette_colour(rng, lo=30, hi=230):
    return tuple(int(v) for v in rng.integers(lo, hi, 3))


def _part_scale(difficulty):
    """Head/part size factor: 1 at difficulty 1, larger (easier) below it."""
    return float(np.clip(1.0 / max(difficulty, 1e-3), 1.0, 2.0))


def _bird_parts(spec, nuis, k=1.0):
    """Polygons of the bird in canonical coords (x forward, y down, unit = body
    half-length); head, crest, beak and eye are scaled by ``k`` about the
    neck. Returns list of (name, points, fill, is_part)."""
    out = []
    neck = np.array([0.75, -0.3])
    for name, pts, fill, is_part in _bird_parts_unscaled(spec, nuis):
        if is_part or name == "head":
            pts = neck + (np.asarray(pts, float) - neck) * k
        out.append((name, pts, fill, is_part))
    return out


@functools.lru_cache(maxsize=8)
def _canonical_box(k):
    """Box covering every class variant (so the class never moves the bird)."""
    dummy = dict(tail=0.15, wing_c=0, body_c=0, bar_c=0, head_c=0, beak_c=0)
    pts = np.concatenate([p for s in CLASS_SPECS for t in (-0.15, 0.15)
                          for _, p, _, _ in _bird_parts(s, {**dummy, "tail": t}, k)])
    return np.stack([pts.min(0), pts.max(0)])


def _bird_parts_unscaled(spec, nuis):
    ring, beak, crest = spec
    hx, hy, hr = 0.95, -0.55, 0.36              # head centre / radius
    parts = []
    # tail (behind the body)
    parts.append(("tail", np.array([[-0.8, -0.1], [-1.65, -0.45 + nuis["tail"]],
                                    [-1.7, 0.25 + nuis["tail"]], [-0.8, 0.2]]),
                  nuis["wing_c"], False))
    parts.append(("body", _ellipse(0, 0, 1.0, 0.58), nuis["body_c"], False))
    # legs
    for lx in (-0.15, 0.2):
        parts.append(("leg", np.array([[lx - .03, .5], [lx + .03, .5],
                                       [lx + .03, .9], [lx - .03, .9]]), (90, 70, 40), False))
    # wing with a wing bar (bar colour is nuisance, not class)
    wing = _ellipse(-0.15, -0.05, 0.62, 0.28) @ np.array([[1, 0.0], [0.25, 1]])
    parts.append(("wing", wing, nuis["wing_c"], False))
    parts.append(("wingbar", _ellipse(-0.1, -0.08, 0.4, 0.06), nuis["bar_c"], False))
    # crest (class)
    if crest == "Crested":
        parts.append(("crest", np.array([[hx - 0.25, hy - 0.22], [hx - 0.38, hy - 0.72],
                                         [hx - 0.05, hy - 0.33], [hx + 0.02, hy - 0.62],
                                         [hx + 0.12, hy - 0.3]]), nuis["head_c"], True))
    # beak (class): starts at the front of the head
    bx, by = hx + hr * 0.9, hy + 0.05
    bc = nuis["beak_c"]
    if beak == "Short":
        pts = [[bx - .05, by - .1], [bx + 0.22, by + 0.02], [bx - .05, by + .1]]
    elif beak == "Long":
        pts = [[bx - .05, by - .06], [bx + 0.6, by + 0.03], [bx - .05, by + .06]]
    else:  # Hooked
        pts = [[bx - .05, by - .12], [bx + 0.25, by - .1], [bx + 0.36, by + 0.02],
               [bx + 0.3, by + 0.2], [bx + 0.24, by + 0.06], [bx - .05, by + .1]]
    parts.append(("head", _ellipse(hx, hy, hr, hr), nuis["head_c"], False))
    parts.append(("beak", np.array(pts), bc, True))
    # eye ring (class colour) + pupil
    ex, ey = hx + 0.1, hy - 0.06
    parts.append(("ring", _ellipse(ex, ey, RING_RADIUS, RING_RADIUS, 24), RING_COLOURS[ring], True))
    parts.append(("eye", _ellipse(ex, ey, PUPIL_RADIUS, PUPIL_RADIUS, 16), (10, 10, 10), True))
    return parts


def _sample_nuisance(rng, size, difficulty):
    """Everything that does NOT depend on the class, drawn from ``rng``."""
    area = rng.uniform(0.10, 0.40)
    return dict(
        area=area, angle=rng.uniform(-25, 25) * math.pi / 180,
        flip=bool(rng.integers(0, 2)), u=rng.uniform(), v=rng.uniform(),
        tail=rng.uniform(-0.15, 0.15),
        body_c=_palette_colour(rng), wing_c=_palette_colour(rng),
        bar_c=_palette_colour(rng), head_c=_palette_colour(rng),
        beak_c=_palette_colour(rng, 120, 220), light=rng.uniform(0.75, 1.15),
        bg_seed=int(rng.integers(0, 2**31 - 1)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def _background(rng, size, difficulty):
    # Colour contrast of the texture grows with difficulty: muted at low difficulty, so a
    # small model can find the bird, saturated at 1.
    amp = float(np.clip(difficulty, 0.15, 1.0))
    lo = (128 + (rng.integers(0, 256, (6, 6, 3)) - 128) * amp).astype(np.uint8)
    img = Image.fromarray(lo).resize((size, size), Image.BICUBIC)
    d = ImageDraw.Draw(img)
    ring_cols = list(RING_COLOURS.values())
    n_shapes = int(round(rng.integers(6, 14) * difficulty))
    for _ in range(n_shapes):
        kind = rng.integers(0, 4)
        c = _palette_colour(rng)
        x0, y0 = rng.uniform(-0.1, 1.0, 2) * size
        w, h = rng.uniform(0.05, 0.35, 2) * size
        if kind == 0:
            d.ellipse([x0, y0, x0 + w, y0 + h], fill=c)
        elif kind == 1:
            d.rectangle([x0, y0, x0 + w, y0 + h], fill=c)
        elif kind == 2:  # branch / stripe
            d.line([x0, y0, x0 + rng.uniform(-1, 1) * size, y0 + rng.uniform(-.5, .5) * size],
                   fill=c, width=int(rng.integers(2, 9)))
        else:
            pts = (rng.uniform(0, 1, (3, 2)) * size).tolist()
            d.polygon([tuple(p) for p in pts], fill=c)
    # small coloured dots, some in the eye-ring colours, so "a red dot
    # somewhere" is not a shortcut
    for _ in range(int(round(rng.integers(4, 12) * difficulty))):
        c = ring_cols[rng.integers(0, len(ring_cols))] if rng.uniform() < 0.6 \
            else _palette_colour(rng)
        x, y = rng.uniform(0, 1, 2) * size
        r = rng.uniform(0.008, 0.03) * size
        d.ellipse([x - r, y - r, x + r, y + r], fill=c)
    return img


def _placement(nuis, size, difficulty):
    """The canonical -> image transform of one image: ``p_image = p @ R.T + t`` (R: rotation,
    flip and scale), and the head's part scale ``k``. The extent is class-independent (a fixed
    canonical bounding box), so the class never moves the bird."""
    k = _part_scale(difficulty)
    canon_box = _canonical_box(k)
    cw, ch = canon_box[1] - canon_box[0]
    scale = math.sqrt(nuis["area"] * size * size / (cw * ch))
    ca, sa = math.cos(nuis["angle"]), math.sin(nuis["angle"])
    R = np.array([[ca, -sa], [sa, ca]]) * scale
    if nuis["flip"]:
        R = R @ np.diag([-1.0, 1.0])
    corners = np.array([[x, y] for x in canon_box[:, 0] for y in canon_box[:, 1]]) @ R.T
    ext_lo, ext_hi = corners.min(0), corners.max(0)
    span = ext_hi - ext_lo
    if span.max() > size * 0.98:                  # shrink if it does not fit
        f = size * 0.98 / span.max()
        R, ext_lo, span = R * f, ext_lo * f, span * f
    free = size - span
    t = np.array([nuis["u"] * free[0], nuis["v"] * free[1]]) - ext_lo
    return R, t, k


def eye_ring_diameter(seed, size: int = 256, difficulty: float = 1.0) -> float:
    """Outer diameter, in pixels, of the eye ring that ``render(c, seed, size, difficulty)``
    draws (for any class ``c``: the class changes the ring's colour, never its place or size).

    Computed from the same nuisance draw and canonical -> image transform as :func:`render`,
    without drawing: ``2 * RING_RADIUS * k * s``, where ``k`` is the head's part scale and ``s``
    the transform's scale (``sqrt(|det R|)``: rotation and flip keep lengths).
    """
    nuis = _sample_nuisance(np.random.default_rng(seed), size, difficulty)
    R, _, k = _placement(nuis, size, difficulty)
    return float(2 * RING_RADIUS * k * math.sqrt(abs(np.linalg.det(R))))


def image_seeds(root) -> dict[int, tuple[int, tuple]]:
    """{image id: (species, seed)} of a set :func:`generate` wrote to ``root``: the ids of its
    ``images.txt`` (:class:`fgnb.data.CUBDataset` keeps them in ``ids``), and the arguments
    ``render(species, seed, size, difficulty)`` drew each image with: seed = (data seed,
    species, index within the species), the index read from the file name."""
    root = pathlib.Path(root)
    p = _is_complete(root)
    if p is None:
        raise FileNotFoundError(f"{root} holds no complete synthetic set (meta.json)")
    first = p.get("first_class", 0)
    labels = {}
    for line in (root / "image_class_labels.txt").read_text().splitlines():
        if line.strip():
            i, c = line.split()
            labels[int(i)] = first + int(c) - 1
    out = {}
    for line in (root / "images.txt").read_text().splitlines():
        if line.strip():
            i, rel = line.split(maxsplit=1)
            j = int(rel.rsplit("_", 1)[1].split(".")[0]) - 1  # <class>/<name>_<j + 1:04d>.jpg
            out[int(i)] = (labels[int(i)], (p["seed"], labels[int(i)], j))
    return out


def eye_ring_diameters(root) -> dict[int, float]:
    """{image id: eye-ring diameter in source pixels} of every image of a generated set."""
    p = _is_complete(pathlib.Path(root)) or {}
    return {i: eye_ring_diameter(seed, p["size"], p["difficulty"]) for i, (_, seed) in image_seeds(root).items()}


def _layout(class_index: int, seed, size: int, difficulty: float):
    """Everything :func:`render` draws, before drawing: the class spec, the nuisance factors,
    the part scale ``k`` and the canonical -> pixel map ``p -> p @ R.T + t``."""
    nuis = _sample_nuisance(np.random.default_rng(seed), size, difficulty)
    R, t, k = _placement(nuis, size, difficulty)
    return CLASS_SPECS[class_index], nuis, k, R, t


#: The three cues that tell the species apart, in the order of ``parts/parts.txt``.
CUES = ("beak", "eye", "crest")


def cue_points(class_index: int, seed, size: int = 256, difficulty: float = 1.0) -> dict[str, tuple[float, float]]:
    """Centre (x, y) in pixels of each cue of the image :func:`render` draws with the same
    arguments: the beak polygon's centroid, the eye's centre and the crest's centroid.

    A plain head has no crest; its ``crest`` point is the crown, where a crest would grow
    (on the head, 0.8 of its radius from the centre towards the crest's centroid): the
    place a reader must look to see that there is none. Nothing is drawn, so this is
    cheap; ``parts/part_locs.txt`` of a generated set holds it.
    """
    spec, nuis, k, R, t = _layout(class_index, seed, size, difficulty)
    polys = {name: np.asarray(pts) for name, pts, _, _ in _bird_parts((spec[0], spec[1], "Crested"), nuis, k)}
    pts = {c: polys[c].mean(0) for c in CUES}
    if spec[2] != "Crested":
        centre = polys["head"].mean(0)
        radius = np.linalg.norm(polys["head"] - centre, axis=1).max()
        towards = pts["crest"] - centre
        pts["crest"] = centre + 0.8 * radius * towards / np.linalg.norm(towards)
    return {c: tuple(float(v) for v in pts[c] @ R.T + t) for c in CUES}


def render(class_index: int, seed, size: int = 256, difficulty: float = 1.0):
    """Render one image. Returns ``(PIL.Image RGB, object_box, part_box)``
    with boxes as ``(x, y, w, h)`` floats in pixels.

    ``seed`` (int or sequence) fixes all nuisance factors; the class only
    changes the head (eye ring, beak, crest), so ``render(a, s)`` and
    ``render(b, s)`` differ only inside the part box of either image.
    """
    spec, nuis, k, R, t = _layout(class_index, seed, size, difficulty)
    img = _background(np.random.default_rng(nuis["bg_seed"]), size, difficulty)

    d = ImageDraw.Draw(img)
    all_pts, part_pts = [], []
    for name, pts, fill, is_part in _bird_parts(spec, nuis, k):
        p = pts @ R.T + t
        d.polygon([tuple(q) for q in p], fill=fill)
        all_pts.append(p)
        if is_part or name == "head":
            part_pts.append(p)

    # global lighting + sensor noise (same for every class given the seed)
    arr = np.asarray(img, dtype=np.float32) * nuis["light"]
    nrng = np.random.default_rng(nuis["noise_seed"])
    arr += nrng.normal(0, 6.0 * difficulty, arr.shape).astype(np.float32)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))

    def box(pl):
        p = np.concatenate(pl)
        lo = np.clip(p.min(0), 0, size)
        hi = np.clip(p.max(0), 0, size)
        return (float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1]))

    return img, box(all_pts), box(part_pts)


# --- writing the CUB layout --------------------------------------------------
def _params(num_classes, train_per_class, test_per_class, size, seed, difficulty, first_class=0, shape=None):
    p = dict(version=GENERATOR_VERSION, num_classes=int(num_classes),
             train_per_class=int(train_per_class), test_per_class=int(test_per_class),
             size=int(size), seed=int(seed), difficulty=float(difficulty))
    if first_class:  # only when set, so the default sets keep their cache keys
        p["first_class"] = int(first_class)
    if shape is not None:  # likewise
        w, h = shape
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0):
            raise ValueError(f"shape=(width, height) in whole pixels > 0, got {shape!r}")
        p["shape"] = [w, h]
    return p


def _stretch(p: dict) -> tuple[float, float]:
    """(sx, sy): how a set with ``shape`` stretches the square render to width x height."""
    w, h = p.get("shape", (p["size"], p["size"]))
    return w / p["size"], h / p["size"]


def _is_complete(root: pathlib.Path) -> dict | None:
    mf = root / "meta.json"
    if not mf.is_file():
        return None
    try:
        return json.loads(mf.read_text())["params"]
    except (ValueError, KeyError):
        return None


def generate(root, num_classes: int = DEFAULTS["num_classes"],
             train_per_class: int = DEFAULTS["train_per_class"],
             test_per_class: int = DEFAULTS["test_per_class"],
             size: int = DEFAULTS["size"], seed: int = DEFAULTS["seed"],
             difficulty: float = DEFAULTS["difficulty"],
             first_class: int = DEFAULTS["first_class"],
             overwrite: bool = False, shape: tuple[int, int] | None = None) -> pathlib.Path:
    """Write the synthetic set to ``root`` in CUB-200-2011 layout; return ``root``.

    Same parameters -> byte-identical files. Writing goes into a temporary
    folder next to ``root`` that is renamed at the end, so a half-written set
    is never left at ``root``. If ``root`` already holds a complete set with
    the same parameters it is returned as is (cache); with other parameters
    (or an unknown folder) a ``FileExistsError`` is raised unless
    ``overwrite=True``. ``first_class`` picks which of the 30 species the set holds
    (species ``first_class`` .. ``first_class + num_classes - 1``): the CPU profile's
    pre-trained weights come from species 11-30, the default set is species 1-10.
    ``shape=(width, height)`` stretches every square render to that size, boxes and
    part points with it: ``shape=CUB_SHAPE`` writes images of CUB's typical 500 x 375, so
    the full recipe's transform (600 -> 448, the 896 px source view) runs on the sizes it
    meets on CUB (chapter 7's memory and speed check, ``bench/gpu_check.py``).
    Chapter 1 explains the data.
    """
    root = pathlib.Path(root).expanduser()
    params = _params(num_classes, train_per_class, test_per_class, size, seed, difficulty, first_class, shape)
    class_names(num_classes, first_class)  # validates both
    if root.exists():
        have = _is_complete(root)
        if have == params:
            if not (root / "parts" / "part_locs.txt").is_file():
                _write_cues(root, params)  # a set made before the cues were written: same images, add them
            return root
        if not overwrite:
            what = "a synthetic set with different parameters " + json.dumps(have) \
                if have else "something that is not a complete synthetic set"
            raise FileExistsError(
                f"{root} already holds {what}; requested {json.dumps(params)}. "
                "Pass overwrite=True or choose another root.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write(tmp, params)
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.rename(root, old)
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write(out: pathlib.Path, p: dict) -> None:
    first = p.get("first_class", 0)
    names = class_names(p["num_classes"], first)
    images, labels, split, bboxes, pboxes = [], [], [], [], []
    img_id = 0
    for c, cname in enumerate(names):
        (out / "images" / cname).mkdir(parents=True)
        n_tr, n_te = p["train_per_class"], p["test_per_class"]
        for j in range(n_tr + n_te):
            img_id += 1
            img, ob, pb = render(first + c, (p["seed"], first + c, j), p["size"], p["difficulty"])
            if "shape" in p:
                sx, sy = _stretch(p)
                img = img.resize(tuple(p["shape"]), Image.BICUBIC)
                ob, pb = [(b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy) for b in (ob, pb)]
            rel = f"{cname}/{cname.split('.', 1)[1]}_{j + 1:04d}.jpg"
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=92)
            (out / "images" / rel).write_bytes(buf.getvalue())
            images.append(f"{img_id} {rel}")
            labels.append(f"{img_id} {c + 1}")
            # interleave so the split does not just follow the file order
            split.append(f"{img_id} {1 if j < n_tr else 0}")
            bboxes.append(f"{img_id} " + " ".join(f"{v:.1f}" for v in ob))
            pboxes.append(f"{img_id} " + " ".join(f"{v:.1f}" for v in pb))

    def w(name, lines):
        (out / name).write_text("\n".join(lines) + "\n")
    w("images.txt", images)
    w("image_class_labels.txt", labels)
    w("train_test_split.txt", split)
    w("bounding_boxes.txt", bboxes)
    w("part_boxes.txt", pboxes)
    _write_cues(out, p)
    w("classes.txt", [f"{i + 1} {n}" for i, n in enumerate(names)])
    specs = {n: dict(zip(("eye_ring", "beak", "crest"), s))
             for n, s in zip(names, CLASS_SPECS[first:])}
    w("README.txt", [
        "fgnb synthetic fine-grained set (stylised birds), CUB-200-2011 layout.",
        "Classes differ only in the head: eye-ring colour, beak shape, crest.",
        "part_boxes.txt: id x y w h of the discriminative head region (pixels).",
        "parts/parts.txt, parts/part_locs.txt: the cues' centres (beak, eye, crest; id part x y visible), "
        "as CUB's part locations; a plain head's crest point is its crown.",
        "Generator parameters: " + json.dumps(p, sort_keys=True),
        "Made by fgnb.synthetic.generate; see Chapter 1 of the fgnb book.",
    ])
    # meta.json last: its presence marks a complete set
    (out / "meta.json").write_text(json.dumps(
        dict(generator="fgnb.synthetic", params=p, classes=specs,
             num_images=img_id), indent=1, sort_keys=True) + "\n")


def _images_in_order(p: dict):
    """(image id, class index, image number) of a set with parameters ``p``, as :func:`_write` numbers them."""
    first, n = p.get("first_class", 0), p["train_per_class"] + p["test_per_class"]
    return ((c * n + j + 1, first + c, j) for c in range(p["num_classes"]) for j in range(n))


def _write_cues(out: pathlib.Path, p: dict) -> None:
    """``parts/parts.txt`` and ``parts/part_locs.txt`` (CUB's format: id part x y visible).

    Written into a temporary folder renamed at the end, so a set is never left with half a file."""
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".parts.tmp-", dir=out))
    try:
        (tmp / "parts.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CUES)))
        lines = []
        sx, sy = _stretch(p)
        for img_id, cls, j in _images_in_order(p):
            pts = cue_points(cls, (p["seed"], cls, j), p["size"], p["difficulty"])
            lines += [f"{img_id} {i + 1} {pts[c][0] * sx:.1f} {pts[c][1] * sy:.1f} 1\n" for i, c in enumerate(CUES)]
        (tmp / "part_locs.txt").write_text("".join(lines))
        try:
            os.rename(tmp, out / "parts")
        except OSError:
            if not (out / "parts" / "part_locs.txt").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process added the same file first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def default_root() -> pathlib.Path:
    """Cache folder: ``$FGNB_DATA`` if set, else ``~/.cache/fgnb``."""
    env = os.environ.get("FGNB_DATA")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "fgnb"


def ensure_synthetic(**params) -> pathlib.Path:
    """Generate (once) into ``default_root()/synthetic-<hash>`` and return it.

    Keyword arguments are those of :func:`generate` (minus ``root``); missing
    ones take :data:`DEFAULTS`.
    """
    unknown = set(params) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown synthetic parameter(s) {sorted(unknown)}; "
                        f"valid: {sorted(DEFAULTS)}")
    full = {**DEFAULTS, **params}
    p = _params(**full)
    h = hashlib.sha1(json.dumps(p, sort_keys=True).encode()).hexdigest()[:10]
    return generate(default_root() / f"synthetic-{h}", **full)
