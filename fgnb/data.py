"""Data sets and box-aware transforms (Chapter 1: fine-grained recognition and the data).

Every item is a dict::

    {'image':    FloatTensor[3, H, W]  normalised model input,
     'label':    int64 tensor, 0-based class,
     'box':      FloatTensor[4] object box, xyxy, in the model input's pixels
                 (NaN x 4 if unknown),
     'part_box': FloatTensor[4] discriminative-part box, same frame (NaN if unknown),
     'part_points': FloatTensor[P, 2] (only for sets with part locations, CUB's
                 parts/part_locs.txt) (x, y) of each named part (``dataset.part_names``)
                 in input pixels; NaN if not visible or outside the view,
     'index':    int, the item's index in the data set,
     'skipped':  int, unreadable items passed over to return this one
                 (0 unless on_error='skip'),
     'source':   FloatTensor[3, S, S]  (only when the transform has
                 ``source_size``) the same geometric view at resolution S,
                 normalised like 'image'; a box in input pixels times S / H is
                 the same region in 'source'.}

PyTorch's default collate stacks these into a batch.

Image loading always returns RGB, as an image viewer shows the file:
grayscale, CMYK, palette and RGBA images are converted, transparency is
composited on white, 16-bit grayscale is scaled (65535 -> 255, not clipped)
and the EXIF orientation is applied. Boxes from annotation files are taken to
be in the *stored* pixel grid (CUB-200-2011's annotations predate EXIF-aware
viewers); when an image carries an EXIF orientation the data sets map its
boxes through the same rotation/flip, so a box still frames the annotated
object. Images with a side under ``MIN_IMAGE_SIDE`` pixels, files PIL cannot
decode and images over PIL's decompression-bomb limit
(``PIL.Image.MAX_IMAGE_PIXELS``) are unreadable.

Error policy (``on_error``): files are checked for existence when the data set
is built; a missing file raises ``FileNotFoundError`` naming it (``'raise'``)
or is left out and listed in ``.skipped`` (``'skip'``). An unreadable file
raises ``OSError`` naming it at load time (``'raise'``) or, with ``'skip'``,
the next readable item is returned instead and the item's ``'skipped'`` entry
says how many were passed over, so the process that receives the batch can
name them (:meth:`_DictDataset.passed_over`) whatever the number of DataLoader
workers. :meth:`_DictDataset.verify` opens every image once up front.
"""
from __future__ import annotations

import math
import os
import pathlib
import warnings
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .config import DERIVED

__all__ = [
    "load_rgb", "PairedTransform", "make_transform", "CUBDataset",
    "ImageFolderDataset", "TorchvisionDataset", "torchvision_dataset",
    "build_dataset", "DATASET_NAMES", "stratified_split", "orient_box", "MIN_IMAGE_SIDE",
]

DATASET_NAMES = ("synthetic", "cub", "folder", "aircraft", "flowers", "pets")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_NAN4 = (float("nan"),) * 4


# --- images ------------------------------------------------------------------
#: images with a side shorter than this are unreadable (tracking pixels, placeholders)
MIN_IMAGE_SIDE = 2
_EXIF_ORIENTATION = 0x0112
#: EXIF orientation -> the transpose that turns the stored pixels into the shown image
_ORIENT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
           4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
           6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    # 16-bit grey (PNG's "I" in older Pillow): PIL's convert would clip every value above 255 to white
    if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
        a = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def load_rgb(path) -> Image.Image:
    """Open ``path`` as an RGB PIL image, as a viewer shows it; errors name the file.

    The EXIF orientation is applied and recorded in ``image.info['orientation']``
    (1: none; see :func:`orient_box`).
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():  # over MAX_IMAGE_PIXELS is an error, not a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
                rgb = _to_rgb(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, DecompressionBomb...
        hint = (f" (PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}; raise it if the file is genuine)"
                if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)) else "")
        raise OSError(f"cannot read image file {path}: {e}{hint}") from e
    if min(rgb.size) < MIN_IMAGE_SIDE:
        raise OSError(f"image file {path} is {rgb.width}x{rgb.height} pixels: too small to be a photo "
                      f"(fgnb.data.MIN_IMAGE_SIDE={MIN_IMAGE_SIDE})")
    if orientation in _ORIENT:
        rgb = rgb.transpose(_ORIENT[orientation])
    else:
        orientation = 1
    rgb.info["orientation"] = orientation
    return rgb


def orient_box(box, orientation: int, width: int, height: int):
    """Map an xyxy box from the stored pixel grid (``width`` x ``height``) into the
    image shown after applying EXIF ``orientation`` (what :func:`load_rgb` returns)."""
    if box is None or orientation not in _ORIENT or any(math.isnan(v) for v in box):
        return box
    W, H = float(width), float(height)
    point = {2: lambda x, y: (W - x, y), 3: lambda x, y: (W - x, H - y), 4: lambda x, y: (x, H - y),
             5: lambda x, y: (y, x), 6: lambda x, y: (H - y, x), 7: lambda x, y: (H - y, W - x),
             8: lambda x, y: (y, W - x)}[orientation]
    (ax, ay), (bx, by) = point(box[0], box[1]), point(box[2], box[3])
    return (min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))


def _xywh_to_xyxy(b):
    x, y, w, h = b
    return (x, y, x + w, y + h)


# --- transforms --------------------------------------------------------------
class PairedTransform:
    """The FGVC recipe with boxes carried through every geometric step.

    Train: resize the whole image to a *square* ``resize_size`` x
    ``resize_size`` (aspect not kept, as in TransFG's ``Resize((600, 600))``),
    random crop ``image_size``, random horizontal flip (p = 0.5).
    Eval: same square resize, centre crop. ``resize_size`` defaults to
    ``round(image_size * 8 / 7)`` (256 for 224).

    The whole geometric view is one rectangle of the original image (plus a
    flip), rendered with ``PIL.Image.resize(box=...)`` at ``image_size`` and,
    if ``source_size`` is set, again at ``source_size``: both are exactly the
    same view. Boxes (xyxy, original pixels, continuous coordinates where
    pixel i covers [i, i+1)) are mapped by the same affine map and clipped to
    the view. Randomness comes from ``torch`` (or the ``generator`` given), so
    ``torch.manual_seed`` and DataLoader worker seeding make it reproducible.
    """

    def __init__(self, train: bool, image_size: int, resize_size: int | None = None,
                 mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                 source_size: int | None = None, hflip: bool = True,
                 generator: torch.Generator | None = None, interpolation=Image.BICUBIC):
        self.train = bool(train)
        self.image_size = int(image_size)
        self.resize_size = int(resize_size) if resize_size else DERIVED["resize_size"]({"img_size": image_size})
        if self.resize_size < self.image_size:
            raise ValueError(f"resize_size {self.resize_size} < image_size {self.image_size}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.source_size = int(source_size) if source_size else None
        self.hflip = bool(hflip)
        self.generator = generator
        self.interpolation = interpolation

    def __repr__(self):
        return (f"PairedTransform(train={self.train}, image_size={self.image_size}, "
                f"resize_size={self.resize_size}, source_size={self.source_size}, "
                f"hflip={self.hflip}, mean={self.mean.flatten().tolist()}, "
                f"std={self.std.flatten().tolist()})")

    def sample_view(self, width: int, height: int):
        """Return ``(region, flip)``: region = (x0, y0, x1, y1) in original pixels."""
        R, s = self.resize_size, self.image_size
        if self.train:
            g = self.generator
            ox = int(torch.randint(0, R - s + 1, (1,), generator=g))
            oy = int(torch.randint(0, R - s + 1, (1,), generator=g))
            flip = self.hflip and bool(torch.rand(1, generator=g) < 0.5)
        else:
            ox = oy = int(round((R - s) / 2.0))
            flip = False
        sx, sy = width / R, height / R
        return (ox * sx, oy * sy, (ox + s) * sx, (oy + s) * sy), flip

    @staticmethod
    def map_box(box, region, flip: bool, out_size: int) -> torch.Tensor:
        """Map an xyxy box from original pixels into a view of ``out_size``."""
        if box is None:
            return torch.tensor(_NAN4)
        x0, y0, x1, y1 = region
        fx, fy = out_size / (x1 - x0), out_size / (y1 - y0)
        bx0, by0, bx1, by1 = (float(v) for v in box)
        if any(math.isnan(v) for v in (bx0, by0, bx1, by1)):
            return torch.tensor(_NAN4)
        nx0, nx1 = (bx0 - x0) * fx, (bx1 - x0) * fx
        ny0, ny1 = (by0 - y0) * fy, (by1 - y0) * fy
        if flip:
            nx0, nx1 = out_size - nx1, out_size - nx0
        c = lambda v: min(max(v, 0.0), float(out_size))
        return torch.tensor((c(nx0), c(ny0), c(nx1), c(ny1)), dtype=torch.float32)

    def render(self, img: Image.Image, region, flip: bool, size: int) -> torch.Tensor:
        view = img.resize((size, size), self.interpolation, box=region)
        if flip:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        t = torch.from_numpy(np.asarray(view, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (t.float().div_(255.0) - self.mean) / self.std

    @staticmethod
    def map_points(points, region, flip: bool, out_size: int) -> torch.Tensor:
        """Map (P, 2) points (x, y) from original pixels into a view of ``out_size``; a point
        outside the view (or NaN) becomes NaN: no box in the view can contain it."""
        x0, y0, x1, y1 = region
        pts = torch.as_tensor(np.asarray(points, dtype=np.float64), dtype=torch.float64).reshape(-1, 2)
        nx = (pts[:, 0] - x0) * (out_size / (x1 - x0))
        ny = (pts[:, 1] - y0) * (out_size / (y1 - y0))
        if flip:
            nx = out_size - nx
        out = torch.stack([nx, ny], dim=1).float()
        outside = (out < 0).any(1) | (out > out_size).any(1) | torch.isnan(out).any(1)
        out[outside] = float("nan")
        return out

    def __call__(self, img: Image.Image, boxes: dict | None = None, points=None) -> dict:
        """``boxes``: name -> xyxy in original pixels (or None); ``points``: optional (P, 2)
        part locations in original pixels. Returns a dict with 'image', optional 'source',
        every box mapped to input pixels and, with ``points``, 'part_points'."""
        region, flip = self.sample_view(*img.size)
        out = {"image": self.render(img, region, flip, self.image_size)}
        if self.source_size:
            out["source"] = self.render(img, region, flip, self.source_size)
        for k, b in (boxes or {}).items():
            out[k] = self.map_box(b, region, flip, self.image_size)
        if points is not None:
            out["part_points"] = self.map_points(points, region, flip, self.image_size)
        return out


def make_transform(train: bool, image_size: int, resize_size: int | None = None,
                   mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5),
                   source_size: int | None = None, hflip: bool = True,
                   generator: torch.Generator | None = None) -> PairedTransform:
    """Shorthand for :class:`PairedTransform`."""
    return PairedTransform(train, image_size, resize_size, mean, std, source_size, hflip,
                           generator)


# --- shared data set machinery ----------------------------------------------
def stratified_split(labels: Sequence[int], fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask choosing ``round(fraction * n_c)`` items per class (at
    least 1 when fraction > 0 and the class has 2 or more items) with
    ``numpy.random.default_rng(seed)``; deterministic."""
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return mask
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        mask[rng.permutation(idx)[:k]] = True
    return mask


class _DictDataset(torch.utils.data.Dataset):
    """Base: ``samples`` [(path, label)], optional ``boxes`` / ``part_boxes``
    (xywh, original pixels, one row per sample, NaN when unknown)."""

    samples: list
    classes: list
    transform: Callable | None
    on_error: str

    def _check_on_error(self, on_error):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.on_error = on_error
        self.skipped: list[str] = []

    def _drop_missing(self):
        """Check files exist; drop (skip) or raise."""
        ok = []
        for i, (p, _) in enumerate(self.samples):
            if os.path.isfile(p):
                ok.append(i)
            elif self.on_error == "raise":
                raise FileNotFoundError(f"image file not found: {p} (use on_error='skip' "
                                        "to leave missing files out)")
            else:
                self.skipped.append(str(p))
        self._keep(ok)

    #: per-sample attributes that :meth:`_keep` filters along with ``samples``
    _PARALLEL = ("boxes", "part_boxes", "part_points", "ids", "indices")

    #: (N, P, 2) part locations (x, y) in original pixels, NaN when not visible, with the
    #: parts' names in ``part_names``; None for sets without them
    part_points: np.ndarray | None = None
    part_names: list[str] | None = None

    def _keep(self, ok: list[int]) -> None:
        if len(ok) == len(self.samples):
            return
        self.samples = [self.samples[i] for i in ok]
        for name in self._PARALLEL:
            arr = getattr(self, name, None)
            if isinstance(arr, np.ndarray):
                setattr(self, name, arr[ok])
            elif isinstance(arr, list):
                setattr(self, name, [arr[i] for i in ok])

    def verify(self, workers: int = 0, progress: bool = False) -> list[str]:
        """Open every image once. ``'raise'``: an ``OSError`` names every unreadable
        file; ``'skip'``: they are left out, added to ``.skipped`` and returned."""
        from tqdm.auto import tqdm

        loader = torch.utils.data.DataLoader(_Probe(self), batch_size=None, num_workers=workers)
        errors = {i: e for i, e in tqdm(loader, total=len(self), desc="verify data",
                                        disable=not progress) if e}
        bad = [str(self.samples[i][0]) for i in sorted(errors)]
        if errors and self.on_error == "raise":
            shown = "\n  ".join(errors[i] for i in sorted(errors)[:10])
            split = getattr(self, "split", None)
            raise OSError(f"{len(errors)} of {len(self)} images of {type(self).__name__}"
                          + (f" (split {split})" if split else "") + " cannot be read (on_error='skip' "
                          f"leaves them out):\n  {shown}" + ("\n  ..." if len(errors) > 10 else ""))
        self.skipped += [p for p in bad if p not in self.skipped]
        self._keep([i for i in range(len(self)) if i not in errors])
        return bad

    def passed_over(self, index: int, count: int) -> list[str]:
        """Paths of the ``count`` unreadable items passed over to return item ``index``
        (its ``'index'`` and ``'skipped'`` entries)."""
        n = len(self)
        return [str(self.samples[(index - k) % n][0]) for k in range(count, 0, -1)]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        return [l for _, l in self.samples]

    def __len__(self):
        return len(self.samples)

    def _boxes_for(self, i):
        out = {}
        for key, attr in (("box", "boxes"), ("part_box", "part_boxes")):
            arr = getattr(self, attr, None)
            out[key] = None if arr is None else _xywh_to_xyxy(arr[i].tolist())
        return out

    def _load(self, i):
        return load_rgb(self.samples[i][0])

    #: decoded images kept in memory by :meth:`cache_images` (None: every epoch decodes again)
    _cache: dict | None = None

    def cache_images(self, limit_bytes: float = 1 << 30) -> bool:
        """Keep every decoded image in memory after its first use, if the set is small.

        The estimate is the first image's decoded size times the number of images; the
        cache is turned on only when that is at most ``limit_bytes`` (``inf``: always).
        Decoding is then paid once per process instead of once per epoch. Returns whether
        the cache is on. (With DataLoader workers, each worker keeps its own: use
        ``persistent_workers=True`` so it outlives the epoch.)
        """
        if not len(self):
            return False
        try:
            first = self._load(0)
        except OSError:
            return False
        if len(self) * len(first.getbands()) * first.width * first.height > limit_bytes:
            return False
        self._cache = {0: first}
        return True

    def fill_cache(self) -> None:
        """Decode every image now (before DataLoader workers fork, so they share the cache;
        unreadable files are left for ``__getitem__`` to raise or skip)."""
        if self._cache is not None:
            for i in range(len(self)):
                try:
                    self._load_cached(i)
                except OSError:
                    pass

    def _load_cached(self, i):
        if self._cache is None:
            return self._load(i)
        if i not in self._cache:
            self._cache[i] = self._load(i)
        return self._cache[i]

    def _item(self, i, img, skipped=0):
        boxes = self._boxes_for(i)
        points = None if self.part_points is None else self.part_points[i]
        o = img.info.get("orientation", 1)
        if o != 1:  # boxes are in the stored grid; the image was turned as the EXIF says
            w, h = (img.height, img.width) if o in (5, 6, 7, 8) else img.size
            boxes = {k: orient_box(b, o, w, h) for k, b in boxes.items()}
            if points is not None:  # a point is a box of no size
                points = np.array([orient_box((x, y, x, y), o, w, h)[:2] for x, y in points])
        label = torch.tensor(self.samples[i][1], dtype=torch.int64)
        if self.transform is None:
            t = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
            item = {"image": t.float() / 255.0}
            for k, b in boxes.items():
                item[k] = torch.tensor(_NAN4 if b is None else b, dtype=torch.float32)
            if points is not None:
                item["part_points"] = torch.as_tensor(points, dtype=torch.float32)
        elif points is not None and isinstance(self.transform, PairedTransform):
            item = self.transform(img, boxes, points=points)
        else:
            item = self.transform(img, boxes)
        item["label"] = label
        item["index"] = i
        item["skipped"] = skipped
        return item

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(index)
        index %= n
        for k in range(n):
            i = (index + k) % n
            try:
                img = self._load_cached(i)
            except OSError:
                if self.on_error == "raise":
                    raise
                p = str(self.samples[i][0])
                if p not in self.skipped:
                    self.skipped.append(p)
                continue
            return self._item(i, img, k)
        raise RuntimeError(f"no readable image left in {type(self).__name__}; "
                           f"skipped: {self.skipped[:5]}...")


class _Probe(torch.utils.data.Dataset):
    """(index, error message or '') for every sample of a data set: :meth:`_DictDataset.verify`."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        try:
            self.ds._load(i)
        except OSError as e:
            return i, str(e)
        return i, ""


# --- CUB-200-2011 layout (real CUB and the synthetic set) --------------------
_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
_CUB_LAYOUT = ("expected CUB-200-2011 layout: ROOT/images/NNN.Class_Name/*.jpg, "
               "ROOT/images.txt (id relpath), ROOT/image_class_labels.txt (id class, 1-based), "
               "ROOT/train_test_split.txt (id 1|0), ROOT/classes.txt (id NNN.Class_Name), "
               "optional ROOT/bounding_boxes.txt and ROOT/part_boxes.txt (id x y w h)")


def _fields(path: pathlib.Path):
    """(line number, whitespace-split fields, line) of every non-blank line of a CUB text file."""
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if parts:
                yield ln, parts, line


def _read_table(path: pathlib.Path) -> dict[int, list[str]]:
    out = {}
    for ln, parts, line in _fields(path):
        try:
            out[int(parts[0])] = parts[1:]
        except ValueError:
            raise ValueError(f"{path}:{ln}: cannot parse {line.strip()!r}") from None
    return out


def _read_part_locs(root: pathlib.Path, ids: list[int]):
    """CUB's ``parts/parts.txt`` (id name) and ``parts/part_locs.txt`` (image part x y visible):
    (names, (N, P, 2) array in ``ids`` order, NaN where not visible), or (None, None)."""
    names_f, locs_f = root / "parts" / "parts.txt", root / "parts" / "part_locs.txt"
    if not (names_f.is_file() and locs_f.is_file()):
        return None, None
    names = {int(k): " ".join(v) for k, v in _read_table(names_f).items()}
    order = sorted(names)
    col = {k: j for j, k in enumerate(order)}
    row = {img: r for r, img in enumerate(ids)}
    pts = np.full((len(ids), len(order), 2), np.nan)
    for ln, v, line in _fields(locs_f):
        try:
            img, part, x, y, vis = int(v[0]), int(v[1]), float(v[2]), float(v[3]), int(float(v[4]))
        except (ValueError, IndexError):
            raise ValueError(f"{locs_f}:{ln}: expected 'image_id part_id x y visible', got {line.strip()!r}") from None
        if part not in col:
            raise ValueError(f"{locs_f}:{ln}: part id {part} is not in {names_f} (ids {order})")
        if img in row and vis:
            pts[row[img], col[part]] = (x, y)
    return [names[k] for k in order], pts


class CUBDataset(_DictDataset):
    """CUB-200-2011 (or anything in its layout, e.g. :mod:`fgnb.synthetic`).

    ``split``: 'train' (official train minus val), 'val' (``val_fraction`` of
    each class of the official train split, chosen with ``seed``), 'trainval'
    (official train) or 'test' (official test). CUB has no official
    validation split; this one is carved from train so that model selection
    never looks at test. Attributes: ``classes`` (names without the ``NNN.``
    prefix), ``class_dirs``, ``num_classes``, ``samples`` [(path, label 0-based)],
    ``ids`` (official image ids), ``boxes`` / ``part_boxes`` (float arrays
    [N, 4] xywh in original pixels, or None if the file is absent).
    """

    SPLITS = ("train", "val", "trainval", "test")

    def __init__(self, root, split: str = "train", transform: Callable | None = None,
                 val_fraction: float = 0.1, seed: int = 0, on_error: str = "raise"):
        if split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        self.root = pathlib.Path(root).expanduser()
        self.split, self.transform = split, transform
        self._check_on_error(on_error)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data set folder not found: {self.root}; {_CUB_LAYOUT}")
        for name in _CUB_FILES:
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"missing {self.root / name}; {_CUB_LAYOUT}")
        images = _read_table(self.root / "images.txt")
        labels = _read_table(self.root / "image_class_labels.txt")
        is_train = _read_table(self.root / "train_test_split.txt")
        classes = _read_table(self.root / "classes.txt")
        self.class_dirs = [classes[k][0] for k in sorted(classes)]
        self.classes = [d.split(".", 1)[1] if "." in d else d for d in self.class_dirs]
        ids = sorted(images)
        for name, table in (("image_class_labels.txt", labels),
                            ("train_test_split.txt", is_train)):
            missing = [i for i in ids if i not in table]
            if missing:
                raise ValueError(f"{self.root / name} lacks image ids {missing[:5]}")
        lab = np.array([int(labels[i][0]) - 1 for i in ids])
        if lab.min(initial=0) < 0 or lab.max(initial=0) >= len(self.classes):
            raise ValueError(f"class ids in {self.root / 'image_class_labels.txt'} must be "
                             f"1..{len(self.classes)}")
        train = np.array([is_train[i][0] == "1" for i in ids])
        if split == "test":
            sel = ~train
        elif split == "trainval":
            sel = train
        else:
            tr_idx = np.flatnonzero(train)
            val_mask = stratified_split(lab[tr_idx], val_fraction, seed)
            sel = np.zeros(len(ids), dtype=bool)
            sel[tr_idx[val_mask if split == "val" else ~val_mask]] = True
        idx = np.flatnonzero(sel)
        self.ids = [ids[i] for i in idx]
        self.samples = [(str(self.root / "images" / images[ids[i]][0]), int(lab[i])) for i in idx]

        def boxes(name):
            f = self.root / name
            if not f.is_file():
                return None
            t = _read_table(f)
            return np.array([[float(v) for v in t[i]] if i in t else _NAN4
                             for i in self.ids], dtype=np.float64).reshape(-1, 4)
        self.boxes = boxes("bounding_boxes.txt")
        self.part_boxes = boxes("part_boxes.txt")
        self.part_names, self.part_points = _read_part_locs(self.root, self.ids)
        self._drop_missing()


# --- class-per-folder trees --------------------------------------------------
#: a flat ``root/<class>/<image>`` tree: share of each class held out as the test split,
#: chosen with this fixed seed (the same test images for every run, whatever its seed)
FOLDER_TEST_FRACTION, FOLDER_TEST_SEED = 0.2, 0
_FOLDER_LAYOUT = ("expected ROOT/train/<class>/<images> and ROOT/test/<class>/<images> (optionally "
                  "ROOT/val/<class>/<images>), or one ROOT/<class>/<images> tree that fgnb splits into "
                  f"train and test ({FOLDER_TEST_FRACTION:.0%} of each class, fixed seed {FOLDER_TEST_SEED})")


class ImageFolderDataset(_DictDataset):
    """Class-per-folder trees (Stanford Dogs, exported NABirds, ...). Boxes are unknown (NaN).

    Two layouts. *Split*: ``root/train/<class>/<image>`` and ``root/test/<class>/...``
    (and optionally ``root/val/...``); the class folders must be the same in each.
    *Flat*: one ``root/<class>/<image>`` tree; ``test_fraction`` of each class is the
    test split, chosen with the fixed seed ``FOLDER_TEST_SEED``. In both, ``split``:
    'train' (train minus val), 'val' (``val_fraction`` of each class of train, chosen
    with ``seed``, as :class:`CUBDataset`; ``root/val`` when it exists), 'trainval'
    (all of train, plus ``root/val``) or 'test'; ``None`` (flat trees only): every
    image. Classes are the sorted class-folder names.
    """

    SPLITS = ("train", "val", "trainval", "test")

    def __init__(self, root, split: str | None = None, transform: Callable | None = None,
                 on_error: str = "raise", extensions: Sequence[str] = IMG_EXTENSIONS,
                 val_fraction: float = 0.1, seed: int = 0,
                 test_fraction: float = FOLDER_TEST_FRACTION):
        if split is not None and split not in self.SPLITS:
            raise ValueError(f"split must be one of {self.SPLITS}, got {split!r}")
        root = pathlib.Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}; {_FOLDER_LAYOUT}")
        self.root, self.split, self.transform = root, split, transform
        self._check_on_error(on_error)
        self.extensions = tuple(e.lower() for e in extensions)
        if (root / "train").is_dir():
            self._split_layout(split, val_fraction, seed)
        else:
            for name in ("val", "test"):
                if (root / name).is_dir():
                    raise ValueError(f"{root} has {name}/ but no train/ folder; {_FOLDER_LAYOUT}")
            self._flat_layout(split, val_fraction, seed, test_fraction)
        if not self.samples:
            raise ValueError(f"no image files ({', '.join(self.extensions)}) for split {split!r} "
                             f"in {', '.join(map(str, self.folders))}; {_FOLDER_LAYOUT}")
        self.boxes = self.part_boxes = None
        self._drop_missing()

    def _class_dirs(self, folder: pathlib.Path) -> list[str]:
        names = sorted(d.name for d in folder.iterdir() if d.is_dir())
        if not names:
            raise ValueError(f"no class folders in {folder}; {_FOLDER_LAYOUT}")
        return names

    def _scan(self, folder: pathlib.Path) -> list[tuple[str, int]]:
        return [(str(p), c) for c, name in enumerate(self.classes)
                for p in sorted((folder / name).rglob("*"))
                if p.is_file() and p.suffix.lower() in self.extensions]

    def _split_layout(self, split, val_fraction, seed):
        if split is None:
            raise ValueError(f"{self.root} holds train/ (and test/) folders: give split, one of {self.SPLITS}")
        trees = {n: self.root / n for n in ("train", "val", "test") if (self.root / n).is_dir()}
        self.classes = self._class_dirs(trees["train"])
        for name, folder in trees.items():
            other = self._class_dirs(folder)
            if other != self.classes:
                only_train = sorted(set(self.classes) - set(other))
                only_here = sorted(set(other) - set(self.classes))
                raise ValueError(
                    f"the class folders of {folder} differ from those of {trees['train']}: "
                    + "; ".join(m for m in (f"only in train: {only_train}" if only_train else "",
                                            f"only in {name}: {only_here}" if only_here else "") if m)
                    + " (every split needs the same classes)")
        if split == "test":
            if "test" not in trees:
                raise FileNotFoundError(f"no test folder {self.root / 'test'}; {_FOLDER_LAYOUT}")
            self.folders = [trees["test"]]
            self.samples = self._scan(trees["test"])
        elif "val" in trees:  # the data set's own validation split
            names = {"train": ["train"], "val": ["val"], "trainval": ["train", "val"]}[split]
            self.folders = [trees[n] for n in names]
            self.samples = [s for f in self.folders for s in self._scan(f)]
        else:
            self.folders = [trees["train"]]
            self.samples = self._carve(self._scan(trees["train"]), split, val_fraction, seed)

    def _flat_layout(self, split, val_fraction, seed, test_fraction):
        self.classes = self._class_dirs(self.root)
        self.folders = [self.root]
        samples = self._scan(self.root)
        if split is None:
            self.samples = samples
            return
        test = stratified_split([l for _, l in samples], test_fraction, FOLDER_TEST_SEED)
        if split == "test":
            self.samples = [s for s, t in zip(samples, test) if t]
        else:
            self.samples = self._carve([s for s, t in zip(samples, test) if not t], split, val_fraction, seed)

    @staticmethod
    def _carve(samples, split, val_fraction, seed):
        """'train' / 'val' / 'trainval' out of a train list, as :class:`CUBDataset` does."""
        if split == "trainval":
            return samples
        val = stratified_split([l for _, l in samples], val_fraction, seed)
        return [s for s, v in zip(samples, val) if v == (split == "val")]


# --- torchvision's fine-grained sets -----------------------------------------
_TV = {  # name -> (torchvision class, {our split: their split}, extra kwargs)
    "aircraft": ("FGVCAircraft", {"train": "train", "val": "val", "trainval": "trainval",
                                  "test": "test"}, {"annotation_level": "variant"}),
    "flowers": ("Flowers102", {"train": "train", "val": "val", "test": "test"}, {}),
    "pets": ("OxfordIIITPet", {"train": "trainval", "val": "trainval", "trainval": "trainval",
                               "test": "test"}, {"target_types": "category"}),
}


class TorchvisionDataset(_DictDataset):
    """Wraps a torchvision classification data set (built with
    ``transform=None``) into the dict interface. ``subset``: optional indices
    into it (used to carve a val split). Boxes are unknown (NaN)."""

    def __init__(self, base, transform: Callable | None = None, subset=None,
                 on_error: str = "raise"):
        self.base, self.transform = base, transform
        self._check_on_error(on_error)
        self.indices = list(range(len(base))) if subset is None else [int(i) for i in subset]
        self.classes = list(getattr(base, "classes", []))
        labels = getattr(base, "_labels", None)
        if labels is None:  # generic torchvision data set: read every target once
            labels = [int(base[i][1]) for i in range(len(base))]
        self._all_labels = [int(l) for l in labels]
        self.samples = [(f"{type(base).__name__}[{i}]", self._all_labels[i]) for i in self.indices]
        if not self.classes:
            self.classes = [str(c) for c in range(max(self._all_labels) + 1)]
        self.boxes = self.part_boxes = None

    def _load(self, i):
        img, _ = self.base[self.indices[i]]
        if not isinstance(img, Image.Image):
            raise OSError(f"{self.samples[i][0]}: expected a PIL image, got {type(img)}")
        if img.mode != "RGB":
            img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
        return img


def torchvision_dataset(name: str, root, split: str = "train", transform: Callable | None = None,
                        download: bool = False, val_fraction: float = 0.1, seed: int = 0,
                        on_error: str = "raise") -> TorchvisionDataset:
    """``name`` in 'aircraft', 'flowers', 'pets' (torchvision's FGVCAircraft,
    Flowers102, OxfordIIITPet). Oxford Pets has no val split: 'train'/'val'
    are carved from its trainval by :func:`stratified_split`."""
    if name not in _TV:
        raise ValueError(f"unknown torchvision data set {name!r}; valid: {sorted(_TV)}")
    import torchvision.datasets as tvd
    cls_name, splits, extra = _TV[name]
    if split not in splits:
        raise ValueError(f"split {split!r} not valid for {name}; valid: {sorted(splits)}")
    base = getattr(tvd, cls_name)(root=os.fspath(root), split=splits[split], transform=None,
                                  download=download, **extra)
    subset = None
    if name == "pets" and split in ("train", "val"):
        labels = getattr(base, "_labels", None)
        if labels is None:
            labels = [int(base[i][1]) for i in range(len(base))]
        m = stratified_split(labels, val_fraction, seed)
        subset = np.flatnonzero(m if split == "val" else ~m)
    return TorchvisionDataset(base, transform, subset, on_error)


# --- the one factory the CLI uses -------------------------------------------
def build_dataset(name: str = "synthetic", root=None, split: str = "train",
                  image_size: int = 224, source_size: int | None = None,
                  train: bool | None = None, mean: Sequence[float] = (0.5, 0.5, 0.5),
                  std: Sequence[float] = (0.5, 0.5, 0.5), resize_size: int | None = None,
                  hflip: bool = True, val_fraction: float = 0.1, seed: int = 0,
                  on_error: str = "raise", download: bool = False,
                  synthetic_params: dict | None = None):
    """Build a data set by name with the FGVC transform.

    ``name``: 'synthetic' (default; generated once into the cache by
    :func:`fgnb.synthetic.ensure_synthetic` unless ``root`` is given),
    'cub', 'folder', 'aircraft', 'flowers', 'pets'. ``train`` (augment or
    not) defaults to ``split in ('train', 'trainval')``.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASET_NAMES)}")
    if train is None:
        train = split in ("train", "trainval")
    tf = PairedTransform(train, image_size, resize_size, mean, std, source_size, hflip)
    if name in ("synthetic", "cub"):
        if root is None:
            if name == "cub":
                raise ValueError("data set 'cub' needs root= (the CUB_200_2011 folder)")
            from .synthetic import ensure_synthetic
            root = ensure_synthetic(**(synthetic_params or {}))
        elif name == "synthetic" and (synthetic_params
                                      or not (pathlib.Path(root) / "meta.json").exists()):
            from .synthetic import generate
            root = generate(root, **(synthetic_params or {}))
        return CUBDataset(root, split, tf, val_fraction, seed, on_error)
    if root is None:
        raise ValueError(f"data set {name!r} needs root=")
    if name == "folder":
        return ImageFolderDataset(root, split, tf, on_error, val_fraction=val_fraction, seed=seed)
    return torchvision_dataset(name, root, split, tf, download, val_fraction, seed, on_error)


# --- CUB-200-2011 download ----------------------------------------------------
import contextlib  # noqa: E402  (this section is self-contained)

__all__ += ["download_cub", "DownloadError", "CUB_URL", "CUB_MD5"]
#: the official archive (Caltech DATA) and its MD5
CUB_URL = "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
CUB_MD5 = "97eceeb196236b17998738112f37df78"
CUB_ARCHIVE = "CUB_200_2011.tgz"


class DownloadError(RuntimeError):
    """A download or an archive failed; the message says what was kept or removed."""


def _fetch(url: str, part: pathlib.Path, progress: bool, timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, continuing an earlier partial transfer (HTTP Range)."""
    import http.client
    import urllib.error
    import urllib.request

    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "fgnb"} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as r:
            if have and r.status != 206:
                have = 0  # the server ignored the range: start over
            total = None if r.length is None else have + r.length
            with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=part.name.removesuffix(".part"),
                    disable=not progress) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to fetch: the file is complete (the MD5 decides)
            return
        raise DownloadError(f"downloading {url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        size = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"downloading {url} failed after {size} bytes ({e}); the partial file {part} is kept: "
                            "run again to resume") from e
    size = part.stat().st_size
    if total is not None and size < total:
        raise DownloadError(f"downloading {url} stopped at {size} of {total} bytes; the partial file {part} is kept: "
                            "run again to resume")


@contextlib.contextmanager
def _safe_extraction():
    """tarfile's 'data' filter for every extraction inside (no absolute paths, no '..',
    no links out of the folder, no devices): torchvision's extract_archive has none."""
    import tarfile

    if not hasattr(tarfile, "data_filter"):  # Python < 3.11.4
        raise DownloadError("safe extraction needs Python >= 3.11.4 or >= 3.10.12 (tarfile filters)")
    saved = tarfile.TarFile.extraction_filter
    tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)
    try:
        yield
    finally:
        tarfile.TarFile.extraction_filter = saved


def download_cub(root=None, url: str | None = None, md5: str | None = None, progress: bool = True) -> pathlib.Path:
    """Fetch CUB-200-2011 into the folder ``root`` (returned) unless it is there already.

    ``root`` is the data set folder (it ends up holding ``images.txt``; default
    ``$FGNB_DATA/CUB_200_2011`` or ``~/.cache/fgnb/CUB_200_2011``). The archive
    (``url``, default :data:`CUB_URL`, 1.1 GB) goes next to it, as ``CUB_200_2011.tgz.part``
    while it downloads (with a progress bar; an interrupted transfer resumes where it
    stopped on the next call). Its MD5 must be ``md5`` (default :data:`CUB_MD5`), else it is
    removed and :class:`DownloadError` says so. torchvision's ``download_and_extract_archive``
    then checks it and extracts it, with tarfile's safe 'data' filter, into a temporary
    folder that is renamed to ``root`` only when complete.
    """
    import shutil
    import tempfile

    from torchvision.datasets.utils import calculate_md5, check_integrity, download_and_extract_archive

    if root is None:
        from .synthetic import default_root

        root = default_root() / "CUB_200_2011"
    root = pathlib.Path(root).expanduser()
    url, md5 = url or CUB_URL, md5 or CUB_MD5
    if (root / "images.txt").is_file():
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DownloadError(f"{root} exists but holds no images.txt: remove it or choose another data_root "
                            "(the download creates the folder)")
    parent = root.parent
    parent.mkdir(parents=True, exist_ok=True)
    archive, part = parent / CUB_ARCHIVE, parent / (CUB_ARCHIVE + ".part")
    if not check_integrity(archive, md5):
        if archive.exists():  # incomplete or damaged: continue it as a partial download
            os.replace(archive, part)
        _fetch(url, part, progress)
        actual = calculate_md5(part)
        if actual != md5:
            part.unlink()
            raise DownloadError(f"{url}: the download's MD5 is {actual}, not the archive's {md5} (a damaged or "
                                f"different file); removed it: run again to download it anew")
        os.replace(part, archive)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".CUB_200_2011.extract-", dir=parent))
    try:
        with _safe_extraction():
            download_and_extract_archive(url, download_root=str(parent), extract_root=str(tmp),
                                         filename=CUB_ARCHIVE, md5=md5)
        found = tmp / "CUB_200_2011"
        if not (found / "images.txt").is_file():
            raise DownloadError(f"{archive} has no CUB_200_2011/images.txt: not the CUB-200-2011 archive; {_CUB_LAYOUT}")
        if root.exists():
            root.rmdir()  # empty (checked above)
        os.replace(found, root)
    except Exception as e:
        import tarfile

        if isinstance(e, tarfile.FilterError):
            raise DownloadError(f"{archive}: refused to extract an unsafe member ({e}); nothing was extracted "
                                f"into {root}") from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
