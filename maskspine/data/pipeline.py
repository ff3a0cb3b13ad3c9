"""tf.data input pipelines: decode, augment, resize, pad, normalise, crop masks, batch.

Everything here is graph code (it runs inside `Dataset.map`), per image, with static
output shapes. The batch dicts follow docs/architecture.md:

Training (`training=True`):

| key | shape, dtype | meaning |
| --- | --- | --- |
| `images` | [B, H, W, 3] float32 | (pixel - img_mean) / img_std, RGB when to_rgb; padding is 0 |
| `image_info` | [B, 4, 2] float32 | original (h, w); scaled (h, w); scale (y, x); offset (y, x) |
| `gt_boxes` | [B, G, 4] float32 | yxyx input pixels, padding -1 |
| `gt_classes` | [B, G] int32 | contiguous labels 1..K, padding -1 |
| `gt_is_crowd` | [B, G] bool | COCO iscrowd, padding False |
| `gt_masks` | [B, G, M, M] uint8 | 0 / 1, each instance over its own gt box, padding 0 |

Evaluation (`training=False`) adds `image_id` [B] int64 (the data set's ids) to the same
keys, without augmentation. An input pixel and an original pixel are related by
`input = original * scale - offset` (per axis, continuous coordinates), so predictions go
back with `original = (input + offset) / scale`. H, W are `padded_size(config)`.

`gt_masks[b, g]` covers exactly the box `gt_boxes[b, g]`: cell (i, j) is the mask over the
box rows [i, i + 1) * height / M and columns [j, j + 1) * width / M, sampled at the cell
centre from the full-resolution mask (bilinear, then >= 0.5). Masks are never resized at
image size: each crop is taken from the original mask at the box mapped back to original
pixels, which is what resizing, flipping and cropping the mask first would give.

Augmentation (training only), all from stateless random ops seeded by `config.seed` (the
same seed gives the same batches; each pass over the data draws new augmentations):
horizontal flip (`flip_ratio`), expand onto a canvas up to 4x the image filled with the
mean colour (`expand_ratio`), and scale jitter: the output size is scaled by a factor in
[`aug_scale_min`, `aug_scale_max`], the image resized to fit it (`keep_ratio`) and a
random `img_height` x `img_width` window cut out. Instances whose box leaves the window are
dropped; boxes are clipped to the visible image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from maskspine.config import Config

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE

#: The largest canvas side, in image sides, of the expand augmentation (SSD's 4).
MAX_EXPAND_RATIO = 4.0
#: Examples held by the training shuffle buffer (encoded, so a few hundred MB at most).
SHUFFLE_BUFFER = 1024

# --------------------------------------------------------------------------- images


def padded_size(config: Config) -> tuple[int, int]:
    """(height, width) of the network input: the config size rounded up to `divider`."""
    divider = max(int(config.divider), 1)
    height = -(-int(config.img_height) // divider) * divider
    width = -(-int(config.img_width) // divider) * divider
    return height, width


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG / PNG bytes (RGB, grayscale, RGBA, palette) -> uint8 [h, w, 3] RGB, the pixels
    `maskspine.data.images.read_image` (PIL) gives for the same file: JPEGs with the accurate
    integer DCT, as PIL and OpenCV decode them (TensorFlow's default DCT differs by up to 4
    levels). The graph twin of `read_image` for stored bytes (prepared data, serving)."""
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def normalize_image(image: tf.Tensor, config: Config) -> tf.Tensor:
    """uint8 / float RGB [..., 3] -> float32 (x - img_mean) / img_std, channels reversed
    first when `to_rgb` is 0 (the mean and std are given in the model's channel order)."""
    image = tf.cast(image, tf.float32)
    if not config.to_rgb:
        image = image[..., ::-1]
    mean = tf.constant(config.img_mean, tf.float32)
    std = tf.constant(config.img_std, tf.float32)
    return (image - mean) / std


def denormalize_images(images, config: Config) -> np.ndarray:
    """The inverse of `normalize_image`: float32 [..., 3] -> uint8 RGB numpy (for drawing)."""
    images = np.asarray(images, np.float32)
    pixels = images * np.asarray(config.img_std, np.float32) + np.asarray(
        config.img_mean, np.float32
    )
    if not config.to_rgb:
        pixels = pixels[..., ::-1]
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _place(image: tf.Tensor, position: tf.Tensor, window: tf.Tensor, padded: Sequence[int]):
    """Puts `image` [h, w, C] with its top-left corner at `position` (int32 [2], may be
    negative) into a zero canvas, keeping only what falls inside `window` (int32 [2], the
    output size) and padding to `padded` (python ints)."""
    size = tf.shape(image)[:2]
    start = tf.clip_by_value(position, 0, window)
    # An expanded image can lie wholly outside the window: then nothing of it is kept.
    source_start = tf.clip_by_value(-position, 0, size)
    end = tf.clip_by_value(position + size, start, window)
    extent = end - start
    crop = tf.slice(
        image,
        tf.concat([source_start, [0]], 0),
        tf.concat([extent, [-1]], 0),
    )
    after = tf.constant(padded, tf.int32) - end
    paddings = tf.stack([tf.stack([start[0], after[0]]), tf.stack([start[1], after[1]]), [0, 0]])
    placed = tf.pad(crop, paddings)
    return tf.ensure_shape(placed, [padded[0], padded[1], image.shape[-1]])


def _geometry(
    image_size: tf.Tensor,
    output_size: tf.Tensor,
    *,
    keep_ratio: bool,
    expand_ratio: tf.Tensor | float = 1.0,
    expand_fraction: tf.Tensor | None = None,
    scale_factor: tf.Tensor | float = 1.0,
    crop_fraction: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Where the image goes in the output.

    The image (float32 [2] size h, w) is put on a canvas `expand_ratio` times larger at
    `expand_fraction` of the free room; the canvas is resized to fit `output_size x
    scale_factor` (keeping its aspect ratio when `keep_ratio`), and the output window is
    cut at `crop_fraction` of the overhang.

    Returns:
        scaled_size: int32 [2], the resized image.
        scale: float32 [2], scaled_size / image_size.
        position: int32 [2], the resized image's top-left corner in the output.
    """
    canvas = tf.round(image_size * expand_ratio)
    origin = (
        tf.zeros([2])
        if expand_fraction is None
        else tf.floor((canvas - image_size) * expand_fraction)
    )
    target = output_size * scale_factor
    canvas_scale = target / canvas
    if keep_ratio:
        canvas_scale = tf.fill([2], tf.reduce_min(canvas_scale))
    overhang = tf.maximum(tf.round(canvas * canvas_scale) - output_size, 0.0)
    crop = tf.zeros([2]) if crop_fraction is None else tf.round(overhang * crop_fraction)
    scaled_size = tf.maximum(tf.round(image_size * canvas_scale), 1.0)
    scale = scaled_size / image_size
    position = tf.round(origin * canvas_scale) - crop
    return tf.cast(scaled_size, tf.int32), scale, tf.cast(position, tf.int32)


def resize_image(image: tf.Tensor, size, config: Config) -> tf.Tensor:
    """[h, w, C] -> float32 [size[0], size[1], C], bilinear as `config.resize_method` says:
    "bilinear" is `tf.image.resize` (half-pixel centres), "bilinear_legacy" TF1's
    `resize_images` (align_corners=False, no half-pixel centres: tensorflow/tpu
    `models/official/detection/utils/input_utils.py`)."""
    if config.resize_method == "bilinear_legacy":
        resized = tf.compat.v1.image.resize_bilinear(
            tf.cast(image, tf.float32)[None], size, align_corners=False, half_pixel_centers=False
        )
        return resized[0]
    return tf.image.resize(image, size, method="bilinear")


def _render(image: tf.Tensor, scaled_size, position, config: Config) -> tf.Tensor:
    """uint8 [h, w, 3] -> normalised float32 [H, W, 3] placed in the padded output."""
    resized = resize_image(image, scaled_size, config)
    window = tf.constant([config.img_height, config.img_width], tf.int32)
    return _place(normalize_image(resized, config), position, window, padded_size(config))


def _image_info(image_size, scaled_size, scale, position) -> tf.Tensor:
    return tf.stack(
        [
            image_size,
            tf.cast(scaled_size, tf.float32),
            scale,
            tf.cast(-position, tf.float32),
        ]
    )


def preprocess_image(image: tf.Tensor, config: Config) -> tuple[tf.Tensor, tf.Tensor]:
    """The evaluation / inference resize of one image, as the evaluation pipeline does it.

    Args:
        image: uint8 [h, w, 3] RGB (see `decode_image`).
    Returns:
        images: float32 [H, W, 3] normalised and padded (H, W = `padded_size(config)`).
        image_info: float32 [4, 2] (original, scaled, scale, offset) rows.
    """
    image_size = tf.cast(tf.shape(image)[:2], tf.float32)
    output = tf.constant([config.img_height, config.img_width], tf.float32)
    scaled_size, scale, position = _geometry(image_size, output, keep_ratio=bool(config.keep_ratio))
    rendered = _render(image, scaled_size, position, config)
    return rendered, _image_info(image_size, scaled_size, scale, position)


# --------------------------------------------------------------------------- instances


def _decode_masks(encoded: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """PNG strings [N] -> uint8 [N, height, width, 1]."""

    def decode_all():
        return tf.map_fn(
            lambda png: tf.io.decode_png(png, channels=1),
            encoded,
            fn_output_signature=tf.TensorSpec([None, None, 1], tf.uint8),
        )

    return tf.cond(
        tf.size(encoded) > 0, decode_all, lambda: tf.zeros([0, height, width, 1], tf.uint8)
    )


def crop_masks_to_boxes(
    masks: tf.Tensor, boxes: tf.Tensor, mask_size: int, *, flip: tf.Tensor | bool = False
) -> tf.Tensor:
    """Each full-resolution mask cut at its box and resized to mask_size x mask_size.

    Args:
        masks: uint8 / float [N, h, w, 1], values in [0, 1].
        boxes: float32 [N, 4] yxyx in the masks' pixels (continuous coordinates).
        mask_size: M.
        flip: mirror the crops left-right (for a horizontally flipped image).
    Returns:
        uint8 [N, M, M] of 0 / 1: cell (i, j) samples the box point
        (y1 + (i + 0.5) * height / M, x1 + (j + 0.5) * width / M) bilinearly, >= 0.5.
    """
    # One zero pixel around each mask: samples within half a pixel of the image border blend
    # with the zeros beyond it instead of snapping to crop_and_resize's extrapolation value.
    masks = tf.pad(masks, [[0, 0], [1, 1], [1, 1], [0, 0]])
    size = tf.cast(tf.shape(masks)[1:3], tf.float32)
    y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
    half_cell_y = 0.5 * (y2 - y1) / mask_size
    half_cell_x = 0.5 * (x2 - x1) / mask_size
    # crop_and_resize samples pixel index y1n * (h - 1) ... y2n * (h - 1); pixel r's centre
    # sits at continuous r + 0.5, i.e. at padded index r + 1.
    denominator_y = size[0] - 1.0
    denominator_x = size[1] - 1.0
    normalized = tf.stack(
        [
            (y1 + half_cell_y + 0.5) / denominator_y,
            (x1 + half_cell_x + 0.5) / denominator_x,
            (y2 - half_cell_y + 0.5) / denominator_y,
            (x2 - half_cell_x + 0.5) / denominator_x,
        ],
        axis=-1,
    )
    crops = tf.image.crop_and_resize(
        tf.cast(masks, tf.float32),
        normalized,
        tf.range(tf.shape(boxes)[0]),
        [mask_size, mask_size],
        method="bilinear",
    )
    crops = tf.cond(tf.convert_to_tensor(flip), lambda: crops[:, :, ::-1, :], lambda: crops)
    return tf.cast(crops[..., 0] >= 0.5, tf.uint8)


def _pad_to(tensor: tf.Tensor, length: int, value) -> tf.Tensor:
    count = tf.shape(tensor)[0]
    paddings = [[0, length - count]] + [[0, 0]] * (tensor.shape.rank - 1)
    padded = tf.pad(tensor, paddings, constant_values=value)
    return tf.ensure_shape(padded, [length, *tensor.shape[1:]])


# --------------------------------------------------------------------------- one example


def transform_example(
    example: dict,
    config: Config,
    label_table: tf.Tensor,
    *,
    training: bool,
    seed: tf.Tensor | None = None,
) -> dict[str, tf.Tensor]:
    """One prepared example -> one element of the batch dict (no batch dimension).

    Args:
        example: as read from the prepared data (`PreparedData.as_dataset`): `image`
            encoded bytes, `image_id`, `objects/box` [N, 4] yxyx original pixels,
            `objects/category_id` [N], `objects/is_crowd` [N], `objects/mask` [N] PNG.
        config: sizes, normalisation, augmentation and `num_gts`, `mask_crop_size`.
        label_table: int32 [max category id + 1]: the contiguous label of each category id.
        training: augment (needs `seed`) and leave out `image_id`.
        seed: int64 [2] seed of this example's stateless random ops.
    """
    image = decode_image(example["image"])
    objects = example["objects"]
    image_shape = tf.shape(image)[:2]
    image_size = tf.cast(image_shape, tf.float32)
    width = image_size[1]
    boxes = tf.reshape(tf.cast(objects["box"], tf.float32), [-1, 4])
    category_ids = tf.cast(objects["category_id"], tf.int32)
    classes = tf.gather(label_table, tf.clip_by_value(category_ids, 0, tf.size(label_table) - 1))
    is_crowd = tf.cast(objects["is_crowd"], tf.bool)
    output = tf.constant([config.img_height, config.img_width], tf.float32)
    keep_ratio = bool(config.keep_ratio)

    flip = tf.constant(False)
    if training:
        if seed is None:
            raise ValueError("training transforms need a seed")
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)
        uniform = tf.random.stateless_uniform
        flip = uniform([], seeds[0]) < config.flip_ratio
        expand = uniform([], seeds[1]) < config.expand_ratio
        ratio = tf.where(expand, uniform([], seeds[2], 1.0, MAX_EXPAND_RATIO), 1.0)
        low, high = float(config.aug_scale_min), float(config.aug_scale_max)
        factor = uniform([], seeds[4], low, high) if high > low else tf.constant(low)
        scaled_size, scale, position = _geometry(
            image_size,
            output,
            keep_ratio=keep_ratio,
            expand_ratio=ratio,
            expand_fraction=uniform([2], seeds[3]),
            scale_factor=factor,
            crop_fraction=uniform([2], seeds[5]),
        )
        image = tf.cond(flip, lambda: image[:, ::-1, :], lambda: image)
        y1, x1, y2, x2 = tf.unstack(boxes, 4, axis=-1)
        boxes = tf.where(flip, tf.stack([y1, width - x2, y2, width - x1], axis=-1), boxes)
    else:
        scaled_size, scale, position = _geometry(image_size, output, keep_ratio=keep_ratio)

    images = _render(image, scaled_size, position, config)
    image_info = _image_info(image_size, scaled_size, scale, position)

    # Boxes into input pixels, clipped to the part of the image inside the output window.
    scale4 = tf.tile(scale, [2])
    position4 = tf.tile(tf.cast(position, tf.float32), [2])
    visible_low = tf.maximum(tf.cast(position, tf.float32), 0.0)
    visible_high = tf.minimum(tf.cast(position + scaled_size, tf.float32), output)
    input_boxes = boxes * scale4 + position4
    input_boxes = tf.clip_by_value(
        input_boxes, tf.tile(visible_low, [2]), tf.tile(visible_high, [2])
    )
    box_height = input_boxes[:, 2] - input_boxes[:, 0]
    box_width = input_boxes[:, 3] - input_boxes[:, 1]
    keep = tf.cast(tf.where((box_height > 0) & (box_width > 0))[:, 0], tf.int32)

    # More instances than num_gts: keep the largest, in their original order.
    num_gts = int(config.num_gts)
    areas = tf.gather(box_height * box_width, keep)
    count = tf.minimum(tf.size(keep), num_gts)
    keep = tf.gather(keep, tf.sort(tf.math.top_k(areas, k=count, sorted=False).indices))

    kept_boxes = tf.gather(input_boxes, keep)
    # The same boxes in original pixels (unflipped), where the masks are cut.
    source_boxes = (kept_boxes - position4) / scale4
    sy1, sx1, sy2, sx2 = tf.unstack(source_boxes, 4, axis=-1)
    source_boxes = tf.where(
        flip, tf.stack([sy1, width - sx2, sy2, width - sx1], axis=-1), source_boxes
    )
    masks = _decode_masks(tf.gather(objects["mask"], keep), image_shape[0], image_shape[1])
    mask_crops = crop_masks_to_boxes(masks, source_boxes, int(config.mask_crop_size), flip=flip)

    result = {
        "images": images,
        "image_info": image_info,
        "gt_boxes": _pad_to(kept_boxes, num_gts, -1.0),
        "gt_classes": _pad_to(tf.gather(classes, keep), num_gts, -1),
        "gt_is_crowd": _pad_to(tf.gather(is_crowd, keep), num_gts, False),
        "gt_masks": _pad_to(mask_crops, num_gts, tf.constant(0, tf.uint8)),
    }
    if not training:
        result["image_id"] = tf.cast(example["image_id"], tf.int64)
    return result


# --------------------------------------------------------------------------- datasets


def label_table(category_ids: Sequence[int]) -> tf.Tensor:
    """int32 [max id + 1]: entry `category_ids[k]` holds label k + 1, all others -1."""
    size = max(category_ids, default=0) + 1
    table = np.full([size], -1, np.int32)
    for index, category_id in enumerate(category_ids):
        table[category_id] = index + 1
    return tf.constant(table)


def make_dataset(
    examples: tf.data.Dataset,
    config: Config,
    category_ids: Sequence[int],
    *,
    training: bool,
    batch_size: int,
    input_context: tf.distribute.InputContext | None = None,
    take: int = 0,
    examples_per_pass: int | None = None,
    start_batch: int | None = None,
) -> tf.data.Dataset:
    """Prepared examples -> batches of the batch dict (see the module docstring).

    Training batches are a deterministic function of `config.seed` and their position: pass
    p over the data is shuffled with a seed made of (seed, p), example i of the pass is
    augmented with the seed (p, i, seed), and every pass gives `examples_per_pass //
    batch_size` whole batches (the rest of a pass is left out, so that a batch never mixes
    two passes). Batch k of a run is therefore the same whether or not the run was stopped
    and resumed in between.

    Args:
        examples: `PreparedData.as_dataset()`, in stored order.
        config: the config.
        category_ids: the data set category id of each contiguous label (label k + 1 is
            `category_ids[k]`).
        training: shuffle, augment, leave out images without non-crowd instances, drop the
            last partial batch of each pass; else keep order and every image.
        batch_size: images per batch of this input pipeline (per replica).
        input_context: shards the examples across input pipelines.
        take: use only the first `take` examples (0 = all).
        examples_per_pass: training: the examples of this pipeline left after `take`, the
            filter and sharding (needed for `start_batch`).
        start_batch: training: None gives one pass (pass 0); a number gives the endless
            stream of passes from that batch on (`start_batch` 0 is the stream's start).
    """
    dataset = examples.take(take) if take > 0 else examples
    # tf.data converts each function it maps with AutoGraph unless told not to. These have no
    # Python control flow on tensors (the `if`s test Python values), so the graphs are the
    # same without it, and converting `transform_example`'s call tree took about 1 s of the
    # pipeline's first trace in a process (benchmarks/README.md, "Traces made twice or
    # converted for nothing").
    plain = tf.autograph.experimental.do_not_convert
    if training:
        dataset = dataset.filter(plain(lambda e: tf.reduce_any(~e["objects"]["is_crowd"])))
    if input_context is not None and input_context.num_input_pipelines > 1:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    table = label_table(category_ids)
    parallel = config.num_parallel_workers if config.num_parallel_workers > 0 else AUTOTUNE
    if training:
        seed = int(config.seed)
        if start_batch is None:
            first_pass, end_pass, skip = 0, 1, 0
            per_pass = None if examples_per_pass is None else examples_per_pass // batch_size
        else:
            if not examples_per_pass or examples_per_pass < batch_size:
                raise ValueError(
                    "an endless training stream needs examples_per_pass >= batch_size, got "
                    f"{examples_per_pass} for a batch of {batch_size}"
                )
            per_pass = examples_per_pass // batch_size
            first_pass, skip = divmod(int(start_batch), per_pass)
            end_pass = None
        passes = tf.data.Dataset.range(first_pass, end_pass if end_pass is not None else 2**62)

        def one_pass(index):
            # The graph-level seed of this function (not the process's, which may be 0 and
            # then makes TensorFlow compare the tensor op seed below with 0 in Python).
            tf.random.set_seed(_STREAM_GRAPH_SEED)
            shuffled = dataset.shuffle(
                SHUFFLE_BUFFER,
                seed=index * _PASS_SEED_STRIDE + seed,
                reshuffle_each_iteration=False,
            )
            if per_pass is not None:
                shuffled = shuffled.take(per_pass * batch_size)
            return shuffled.enumerate().map(
                plain(lambda position, example: (example, tf.stack([index, position])))
            )

        stream = passes.flat_map(plain(one_pass)).skip(skip * batch_size)

        @plain
        def transform(example, where):
            seeds = tf.stack([where[0] * _PASS_SEED_STRIDE + where[1], tf.constant(seed, tf.int64)])
            return transform_example(example, config, table, training=True, seed=seeds)

        dataset = stream.map(
            transform,
            num_parallel_calls=parallel,
            deterministic=True,
        )
    else:
        dataset = dataset.map(
            plain(lambda example: transform_example(example, config, table, training=False)),
            num_parallel_calls=parallel,
            deterministic=True,
        )
    dataset = dataset.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = True
    return dataset.with_options(options).prefetch(AUTOTUNE)


#: Keeps the seeds of different passes apart: pass p's seeds start at p * this.
_PASS_SEED_STRIDE = 2**31
_STREAM_GRAPH_SEED = 20_200_527
