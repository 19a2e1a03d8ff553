"""`glyphs`: an embedded RGB 32 x 32 data set, made on first use from the fonts matplotlib ships, and cached.

Classes: the ten digits 0-9. Sources: one glyph of one font (21 fonts that hold the digits: DejaVu Sans, Sans
Mono and Serif in four styles each, STIX General in four, and the Computer Modern cmr10, cmb10, cmss10,
cmtt10, cmti10). Every image is one source's glyph under random nuisances that a good representation must
ignore and raw pixels cannot:

- geometry: position (anywhere that keeps most of the glyph in the image), scale (the glyph's longer side 55-90 %
  of the image side), rotation (+-10 degrees), shear, aspect ratio, and a smooth elastic deformation;
- stroke width: the glyph's mask thickened by 0 or 1 mask pixel before it is drawn;
- colour: random foreground and background colours, uniform in RGB with a luminance difference of at least
  0.35 (either may be the lighter one), each with a smooth random shading; a low-frequency colour texture on
  the background; pixel noise;
- clutter: a thin line segment in a third colour.

Why these strengths (STYLE): the data set must be learnable by the trainer's encoder within a short budget while
raw pixels fail. Stronger geometry (rotation +-25 degrees, smaller glyphs, thinning) and more clutter and texture
left simclr near the random encoder after a few hundred steps (benchmarks/results/testbed/design_probes.md).

Split rule: a font is a source family. One font of each of the five families (DejaVu Sans, Sans Mono, Serif,
STIX, Computer Modern) is drawn for the test split; all images of a font live in one split, so the test split
measures generalization to unseen fonts and never recognition of a glyph seen in training. Sizes: 1,000
training and 200 test images per class (10,000 and 2,000), the images of a class spread evenly over its split's
fonts.

The images are a deterministic function of (GLYPHS_VERSION, STYLE, seed) and the installed matplotlib (its fonts
and its FreeType): generation is seeded elementwise torch arithmetic on the CPU (no matrix products, whose bits can
depend on the BLAS kernel). They are cached as uint8 in
$SYNTHCL_FAST_CACHE/datasets (default ~/.cache/synthcl_fast/datasets), one file per version, seed and
matplotlib version.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

GLYPHS_VERSION = 1          # bump when the images change: the cache key holds it
IMAGE_SIZE = 32
CLASSES = "0123456789"
TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
# (font file in matplotlib's mpl-data/fonts/ttf, family); one font per family goes to the test split
FONTS = (
    ("DejaVuSans.ttf", "dejavu-sans"), ("DejaVuSans-Bold.ttf", "dejavu-sans"),
    ("DejaVuSans-Oblique.ttf", "dejavu-sans"), ("DejaVuSans-BoldOblique.ttf", "dejavu-sans"),
    ("DejaVuSansMono.ttf", "dejavu-mono"), ("DejaVuSansMono-Bold.ttf", "dejavu-mono"),
    ("DejaVuSansMono-Oblique.ttf", "dejavu-mono"), ("DejaVuSansMono-BoldOblique.ttf", "dejavu-mono"),
    ("DejaVuSerif.ttf", "dejavu-serif"), ("DejaVuSerif-Bold.ttf", "dejavu-serif"),
    ("DejaVuSerif-Italic.ttf", "dejavu-serif"), ("DejaVuSerif-BoldItalic.ttf", "dejavu-serif"),
    ("STIXGeneral.ttf", "stix"), ("STIXGeneralBol.ttf", "stix"), ("STIXGeneralItalic.ttf", "stix"),
    ("STIXGeneralBolIta.ttf", "stix"),
    ("cmr10.ttf", "computer-modern"), ("cmb10.ttf", "computer-modern"), ("cmss10.ttf", "computer-modern"),
    ("cmtt10.ttf", "computer-modern"), ("cmti10.ttf", "computer-modern"),
)
# the nuisances' strengths (the design probes in benchmarks/results/testbed/design_probes.md tried others;
# they are part of the cache key)
STYLE = {
    "palette": 0,          # 0: colours drawn uniformly in RGB; k > 0: from k fixed colours
    "shading": 0.1,        # amplitude of the smooth shading of the foreground and background colours
    "texture": 0.04,       # amplitude of the background's colour texture (8 x 8 lattice)
    "clutter": 1,          # line segments of clutter
    "noise": 0.02,         # pixel noise (standard deviation)
    "rotation": 10.0,      # degrees, either way
    "scale": (0.55, 0.9),  # the glyph's longer side as a share of the image side
    "shear": 0.1,          # horizontal shear, either way
    "elastic": 0.02,       # amplitude of the elastic deformation (normalized coordinates)
    "stroke": (0, 1),      # stroke width change in mask pixels (0 .. thickened by 1)
}
MASK_SIZE = 64              # glyph masks are drawn at 2x and averaged down to 32 x 32 (antialiasing)
GLYPH_BOX = 48              # a glyph's longer side in the mask before the random scale


def cache_root() -> Path:
    return Path(os.environ.get("SYNTHCL_FAST_CACHE", Path.home() / ".cache" / "synthcl_fast")) / "datasets"


def cache_path(seed: int) -> Path:
    import matplotlib

    import hashlib
    import json

    style = hashlib.sha256(json.dumps(STYLE, sort_keys=True).encode()).hexdigest()[:8]
    return cache_root() / f"glyphs-v{GLYPHS_VERSION}-seed{seed}-style{style}-mpl{matplotlib.__version__}.npz"


def load_glyphs(seed: int = 0, cache: bool = True) -> dict[str, np.ndarray]:
    """The data set of `seed`: {'train_images', 'test_images'} uint8 (N, 3, 32, 32), {'train_labels',
    'test_labels'} int64 (N,), {'train_sources', 'test_sources'} int64 (N,) (the index into FONTS of each
    image's font). Read from the cache, or generated and cached (`cache=False`: generated, not cached)."""
    path = cache_path(seed)
    if cache and path.is_file():
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}
    data = generate_glyphs(seed)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: a reader (another process) never sees half a file
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            np.savez(f, **data)
        os.replace(f.name, path)
    return data


def held_out_fonts(seed: int) -> list[int]:
    """Indices into FONTS of the test split's fonts: one per family, drawn with `seed`."""
    rng = np.random.RandomState(seed)
    families = list(dict.fromkeys(family for _, family in FONTS))
    chosen = []
    for family in families:
        members = [i for i, (_, f) in enumerate(FONTS) if f == family]
        chosen.append(members[rng.randint(len(members))])
    return chosen


def render_masks() -> torch.Tensor:
    """(fonts, classes, MASK_SIZE, MASK_SIZE) float32 in [0, 1]: each glyph's coverage, its bounding box
    scaled to GLYPH_BOX pixels on its longer side and centred."""
    import matplotlib
    from matplotlib.ft2font import FT2Font

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    masks = torch.zeros(len(FONTS), len(CLASSES), MASK_SIZE, MASK_SIZE)
    for i, (name, _) in enumerate(FONTS):
        font = FT2Font(str(root / name))
        for j, char in enumerate(CLASSES):
            font.clear()
            font.set_size(96, 72)     # large, then resized: the same glyph box whatever the font's metrics
            font.set_text(char)
            font.draw_glyphs_to_bitmap(antialiased=True)
            bitmap = np.asarray(font.get_image(), dtype=np.float32) / 255.0
            rows, cols = np.nonzero(bitmap > 0)
            if rows.size == 0:
                raise RuntimeError(f"font {name} has no glyph for {char!r}")
            glyph = torch.from_numpy(bitmap[rows.min():rows.max() + 1, cols.min():cols.max() + 1].copy())
            h, w = glyph.shape
            scale = GLYPH_BOX / max(h, w)
            h2, w2 = max(1, round(h * scale)), max(1, round(w * scale))
            glyph = F.interpolate(glyph[None, None], size=(h2, w2), mode="bilinear", align_corners=False,
                                  antialias=True)[0, 0]
            top, left = (MASK_SIZE - h2) // 2, (MASK_SIZE - w2) // 2
            masks[i, j, top:top + h2, left:left + w2] = glyph.clamp(0, 1)
    return masks


def _smooth_noise(generator, n, channels, grid, size):
    """(n, channels, size, size) smooth random fields in about [-1, 1]: uniform noise on a grid x grid lattice,
    upsampled bicubically."""
    coarse = torch.rand(n, channels, grid, grid, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def _luminance(rgb):
    # elementwise, not a matrix product: the same bits whatever BLAS kernel or thread count
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _colours(generator, k, palette):
    if palette is not None:
        return palette[torch.randint(palette.shape[0], (k,), generator=generator)]
    return torch.rand(k, 3, generator=generator)


def _colour_pairs(generator, n, min_contrast=0.35):
    """(n, 3) foreground and (n, 3) background colours in [0, 1] whose luminances differ by >= min_contrast
    (either way round), by redrawing the pairs that do not."""
    palette = None
    if STYLE["palette"]:
        palette = torch.rand(STYLE["palette"], 3, generator=torch.Generator().manual_seed(99))
        palette[0], palette[1] = 0.05, 0.95    # at least one dark and one light colour
    fg, bg = _colours(generator, n, palette), _colours(generator, n, palette)
    while True:
        bad = (_luminance(fg) - _luminance(bg)).abs() < min_contrast
        if not bad.any():
            return fg, bg
        k = int(bad.sum())
        fg[bad], bg[bad] = _colours(generator, k, palette), _colours(generator, k, palette)


def _draw(masks, fonts, labels, generator):
    """uint8 (n, 3, 32, 32) images of the glyphs masks[fonts[k], labels[k]] under random nuisances."""
    n, s = labels.shape[0], MASK_SIZE
    glyph = masks[fonts, labels].unsqueeze(1)                       # (n, 1, 64, 64)
    # stroke width: dilate (max-pool) or thin (min-pool) the coverage by STYLE["stroke"] mask pixels (-2..2)
    width = torch.randint(STYLE["stroke"][0], STYLE["stroke"][1] + 1, (n,), generator=generator)
    out = glyph.clone()
    for radius in (1, 2):
        k = 2 * radius + 1
        thick = F.max_pool2d(glyph, k, 1, radius)
        thin = -F.max_pool2d(-glyph, k, 1, radius)
        out = torch.where((width == radius).view(n, 1, 1, 1), thick, out)
        out = torch.where((width == -radius).view(n, 1, 1, 1), thin, out)
    glyph = out
    # geometry: output pixel p maps to glyph coordinates A p + t (normalized [-1, 1] coordinates)
    u = lambda low, high: low + (high - low) * torch.rand(n, generator=generator)
    scale = u(*STYLE["scale"])          # the glyph's longer side as a share of the image side (GLYPH_BOX ~ 0.75 of MASK)
    angle = u(-STYLE["rotation"], STYLE["rotation"]) * math.pi / 180
    shear = u(-STYLE["shear"], STYLE["shear"])
    aspect = torch.exp(u(-0.2, 0.2))
    zoom = (GLYPH_BOX / MASK_SIZE) / scale                            # > 1: the glyph shrinks
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = torch.stack([torch.stack([cos, -sin + shear * cos], -1), torch.stack([sin, cos + shear * sin], -1)], -2)
    a = a * torch.stack([zoom * aspect, zoom / aspect], -1).unsqueeze(-1)
    room = (1 - scale * 0.9).clamp(min=0)                             # keep most of the glyph in the image
    shift = torch.stack([u(-1, 1) * room, u(-1, 1) * room], -1)
    # the sampling grid (n, s, s, 2) = A (p - shift), written out elementwise rather than with affine_grid's
    # matrix product, so that the bytes do not depend on the BLAS kernel or the thread count
    centres = (torch.arange(s) + 0.5) / s * 2 - 1
    px, py = centres.view(1, 1, s) - shift[:, 0, None, None], centres.view(1, s, 1) - shift[:, 1, None, None]
    grid = torch.stack([a[:, 0, 0, None, None] * px + a[:, 0, 1, None, None] * py,
                        a[:, 1, 0, None, None] * px + a[:, 1, 1, None, None] * py], -1)
    grid = grid + STYLE["elastic"] * _smooth_noise(generator, n, 2, 4, s).permute(0, 2, 3, 1)   # elastic deformation
    coverage = F.avg_pool2d(F.grid_sample(glyph, grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=False), 2)      # (n, 1, 32, 32)
    # colours: foreground and background with contrast, each smoothly shaded; a background texture
    size = IMAGE_SIZE
    fg, bg = _colour_pairs(generator, n)
    fg_img = (fg.view(n, 3, 1, 1) + STYLE["shading"] * _smooth_noise(generator, n, 3, 3, size)).clamp(0, 1)
    bg_img = (bg.view(n, 3, 1, 1) + STYLE["shading"] * _smooth_noise(generator, n, 3, 3, size)
              + STYLE["texture"] * _smooth_noise(generator, n, 3, 8, size)).clamp(0, 1)
    image = coverage * fg_img + (1 - coverage) * bg_img
    # clutter: STYLE["clutter"] thin line segments in a third colour, random ends anywhere in the image
    image = _clutter(image, generator, count=STYLE["clutter"], strength=u(0.3, 0.8))
    image = image + STYLE["noise"] * torch.randn(image.shape, generator=generator)
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def _clutter(image, generator, count, strength):
    n, _, size, _ = image.shape
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    for _ in range(count):
        p0 = torch.rand(n, 2, generator=generator) * size
        p1 = torch.rand(n, 2, generator=generator) * size
        colour = torch.rand(n, 3, generator=generator)
        d = p1 - p0
        length2 = (d * d).sum(-1).clamp(min=1e-6)
        # distance of every pixel to the segment
        px, py = xs.view(1, size, size) - p0[:, 0, None, None], ys.view(1, size, size) - p0[:, 1, None, None]
        t = ((px * d[:, 0, None, None] + py * d[:, 1, None, None]) / length2.view(n, 1, 1)).clamp(0, 1)
        dist = torch.hypot(px - t * d[:, 0, None, None], py - t * d[:, 1, None, None])
        alpha = (strength.view(n, 1, 1) * (1 - dist).clamp(0, 1)).unsqueeze(1)   # about 1 pixel wide
        image = image * (1 - alpha) + alpha * colour.view(n, 3, 1, 1)
    return image


def generate_glyphs(seed: int = 0) -> dict[str, np.ndarray]:
    """Generate the data set of `seed` (no cache); see load_glyphs for the keys."""
    masks = render_masks()
    test = held_out_fonts(seed)
    train = [i for i in range(len(FONTS)) if i not in test]
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for split, fonts, per_class in (("train", train, TRAIN_PER_CLASS), ("test", test, TEST_PER_CLASS)):
        labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
        # the images of a class spread evenly over the split's fonts
        sources = torch.tensor(fonts)[torch.arange(per_class) % len(fonts)].repeat(len(CLASSES))
        order = torch.randperm(labels.shape[0], generator=generator)
        labels, sources = labels[order], sources[order]
        chunks = [_draw(masks, sources[i:i + 2000], labels[i:i + 2000], generator)
                  for i in range(0, labels.shape[0], 2000)]
        out[f"{split}_images"] = torch.cat(chunks).numpy()
        out[f"{split}_labels"] = labels.numpy().astype(np.int64)
        out[f"{split}_sources"] = sources.numpy().astype(np.int64)
    return out
