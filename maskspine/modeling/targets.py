"""Training targets: max-IoU assignment, balanced sampling, RPN / R-CNN box targets, mask targets.

Everything is batched with static shapes and runs inside `tf.function`. Boxes are yxyx
absolute input pixels, float32. Ground truth follows the training batch contract:
`gt_boxes` [B, G, 4] padded with -1, `gt_classes` [B, G] int32 (1.. for objects, -1 for
padding), `gt_is_crowd` [B, G] bool, `gt_masks` [B, G, M, M] (each instance's mask
cropped to its box and resized to M x M, values in [0, 1]).

The assigner and sampler follow mmdetection's MaxIoUAssigner and RandomSampler (the
reference's `train_cfg` keys); crowd regions follow Detectron: never matched, and a box
that would be a negative but lies mostly inside a crowd region is ignored instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from maskspine.choices import ROI_METHODS
from maskspine.modeling.bilinear import crop_and_resize_samples, gather_bilinear
from maskspine.modeling.box_ops import encode_boxes, pairwise_overlaps
from maskspine.modeling.part import Part

#: `method` values of `mask_targets` (the default first).
MASK_TARGET_METHODS = ROI_METHODS


def assign_max_iou(
    boxes: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_valid: tf.Tensor,
    gt_is_crowd: tf.Tensor,
    *,
    pos_iou_thr: float,
    neg_iou_thr: float,
    min_pos_iou: float,
    match_low_quality: bool,
    boxes_valid: tf.Tensor | None = None,
    crowd_ioa_thr: float = 0.5,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Label boxes (anchors or proposals) positive, negative or ignored by their IoU with
    the ground truth, as mmdetection's MaxIoUAssigner.

    With max_iou the highest IoU of a box over the valid non-crowd gts (0 if there are none):
    - negative (0): max_iou < neg_iou_thr;
    - positive (1): max_iou >= pos_iou_thr, matched to the gt of that IoU;
    - with `match_low_quality`, for each valid non-crowd gt, every valid box whose IoU with
      it equals the gt's highest IoU over the boxes becomes positive for that gt, if that
      IoU is >= `min_pos_iou` (and > 0). When a box is such a match for several gts, the
      last gt wins (mmdetection's loop order);
    - ignored (-1): anything between the thresholds; would-be negatives whose intersection
      over their own area with a crowd gt is >= `crowd_ioa_thr`; boxes with
      `boxes_valid` False.
    Crowd and padding gts are never matched.

    Args:
        boxes: [B, N, 4] yxyx pixels.
        gt_boxes: [B, G, 4] yxyx pixels.
        gt_valid: [B, G] bool, False for padding rows.
        gt_is_crowd: [B, G] bool.
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality: the reference's
            `train_cfg.*.assigner` keys.
        boxes_valid: [B, N] bool or None (all valid).
        crowd_ioa_thr: intersection-over-box-area with a crowd region from which a
            would-be negative is ignored.
    Returns:
        labels: [B, N] int32, 1 positive, 0 negative, -1 ignored.
        matched_gt: [B, N] int32 index into G of the matched gt of positives, 0 elsewhere.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_valid = tf.cast(gt_valid, tf.bool)
    gt_is_crowd = tf.cast(gt_is_crowd, tf.bool)
    if boxes_valid is None:
        boxes_valid = tf.ones(tf.shape(boxes)[:2], tf.bool)
    boxes_valid = tf.cast(boxes_valid, tf.bool)

    iou, ioa = pairwise_overlaps(boxes, gt_boxes)  # [B, N, G] each

    matchable = gt_valid & ~gt_is_crowd  # [B, G]
    # -1 keeps unmatchable gts below every real IoU (real IoUs are >= 0).
    matchable_iou = tf.where(matchable[:, None, :], iou, -1.0)
    max_iou = tf.maximum(tf.reduce_max(matchable_iou, axis=2), 0.0)  # [B, N]
    matched_gt = tf.argmax(matchable_iou, axis=2, output_type=tf.int32)

    positive = max_iou >= pos_iou_thr
    negative = max_iou < neg_iou_thr

    if match_low_quality:
        iou_of_valid_boxes = tf.where(boxes_valid[:, :, None], matchable_iou, -1.0)
        gt_max_iou = tf.reduce_max(iou_of_valid_boxes, axis=1)  # [B, G]
        gt_can_match = matchable & (gt_max_iou >= min_pos_iou) & (gt_max_iou > 0.0)
        is_best_box = gt_can_match[:, None, :] & (iou_of_valid_boxes >= gt_max_iou[:, None, :])
        num_gts = tf.shape(gt_boxes)[1]
        gt_index = tf.range(num_gts, dtype=tf.int32)[None, None, :]
        best_for_gt = tf.reduce_max(tf.where(is_best_box, gt_index, -1), axis=2)  # last gt wins
        low_quality = best_for_gt >= 0
        positive = positive | low_quality
        matched_gt = tf.where(low_quality, best_for_gt, matched_gt)

    labels = tf.where(positive, 1, tf.where(negative, 0, -1))

    crowd = gt_valid & gt_is_crowd
    crowd_ioa = tf.reduce_max(tf.where(crowd[:, None, :], ioa, 0.0), axis=2)
    labels = tf.where((labels == 0) & (crowd_ioa >= crowd_ioa_thr), -1, labels)
    labels = tf.where(boxes_valid, labels, -1)
    matched_gt = tf.where(labels == 1, matched_gt, 0)
    return tf.cast(labels, tf.int32), matched_gt


def _uniform_noise(shape, seed) -> tf.Tensor:
    if seed is None or isinstance(seed, int):
        return tf.random.uniform(shape, seed=seed)
    if isinstance(seed, keras.random.SeedGenerator):
        return keras.random.uniform(shape, seed=seed)
    # Philox random bits (auto_select's choice on CPU and GPU) turned into [0, 1) here: the
    # same draw on every device, compiled with XLA or not. (XLA's float
    # `stateless_uniform` differs from the TensorFlow kernel's; its integer bits agree.)
    bits = tf.random.stateless_uniform(
        shape, seed=seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
    )
    return tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (2.0**-24)


#: The stream of each stateless sampler within one training step (`sampler_seeds`).
SAMPLER_STREAMS = ("rpn", "rcnn")


def sampling_seed(seed: int, step, replica_id=0) -> tf.Tensor:
    """The [2] int64 seed of one training step on one replica for the stateless samplers.

    (config seed, global step) are folded into one key, then the replica id: the same
    triple gives the same seed (and so the same samples), a different step or replica
    another. Folding is `tf.random.experimental.stateless_fold_in` (Philox), which
    compiles with XLA.

    Args:
        seed: the config's `seed`.
        step: scalar int, the global step (e.g. `optimizer.iterations`).
        replica_id: scalar int, e.g. `tf.distribute.get_replica_context()
            .replica_id_in_sync_group`.
    """
    key = tf.constant([int(seed), 0], tf.int64)
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(step, tf.int64), alg="philox")
    return tf.random.experimental.stateless_fold_in(
        key, tf.cast(replica_id, tf.int64), alg="philox"
    )


def sampler_seeds(seed: tf.Tensor | None) -> dict[str, tf.Tensor | None]:
    """One seed of each of `SAMPLER_STREAMS` from a step's [2] `sampling_seed` (None: None
    each, the samplers then draw from TensorFlow's stateful generator)."""
    if seed is None:
        return dict.fromkeys(SAMPLER_STREAMS)
    seed = tf.cast(seed, tf.int64)
    return {
        name: tf.random.experimental.stateless_fold_in(seed, index, alg="philox")
        for index, name in enumerate(SAMPLER_STREAMS)
    }


def sample_balanced(
    labels: tf.Tensor,
    *,
    num: int,
    pos_fraction: float,
    neg_pos_ub: float = -1,
    seed=None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Draw a fixed-size random sample of positives and negatives per image, as mmdetection's
    RandomSampler.

    Up to int(num * pos_fraction) positives are drawn uniformly at random among the
    positives, then negatives fill the rest up to `num` (with `neg_pos_ub` > 0, at most
    int(neg_pos_ub * max(num_positives, 1)) negatives). Sampled positives come first, then
    negatives, then padding.

    Args:
        labels: [B, N] int32, 1 positive, 0 negative, -1 ignored; N must be static.
        num: sample size per image (static).
        pos_fraction: upper bound on the fraction of positives.
        neg_pos_ub: upper bound on negatives / positives, -1 for none.
        seed: None or an int (stateful `tf.random`), a `keras.random.SeedGenerator`, or a
            shape-[2] integer tensor for stateless sampling (`tf.random.stateless_uniform`,
            Philox: the same seed gives the same sample, under XLA too; see
            `sampling_seed` and `sampler_seeds`).
    Returns:
        indices: [B, num] int32 into N, distinct within an image except padding (index 0).
        sampled_labels: [B, num] int32, 1 positive, 0 negative, -1 padding when an image has
            too few boxes to fill the sample.
    """
    labels = tf.convert_to_tensor(labels, tf.int32)
    num_boxes = labels.shape[1]
    if num_boxes is None:
        raise ValueError("sample_balanced: the number of boxes (labels.shape[1]) must be static")
    candidates = min(num, num_boxes)
    is_positive = labels == 1
    is_negative = labels == 0

    # Uniform noise + top_k = a uniformly random order of each kind of candidate.
    noise = _uniform_noise(tf.shape(labels), seed)
    _, positive_order = tf.math.top_k(tf.where(is_positive, noise, -1.0), k=candidates)
    _, negative_order = tf.math.top_k(tf.where(is_negative, noise, -1.0), k=candidates)

    available_pos = tf.reduce_sum(tf.cast(is_positive, tf.int32), axis=1)
    available_neg = tf.reduce_sum(tf.cast(is_negative, tf.int32), axis=1)
    num_pos = tf.minimum(available_pos, int(num * pos_fraction))
    num_neg = tf.minimum(num - num_pos, available_neg)
    if neg_pos_ub > 0:
        upper = tf.cast(neg_pos_ub * tf.cast(tf.maximum(num_pos, 1), tf.float32), tf.int32)
        num_neg = tf.minimum(num_neg, upper)

    slots = tf.range(num, dtype=tf.int32)[None, :]  # [1, num]
    take_pos = slots < num_pos[:, None]
    take_neg = ~take_pos & (slots < (num_pos + num_neg)[:, None])
    batch_slots = tf.broadcast_to(slots, [tf.shape(labels)[0], num])
    pos_index = tf.gather(positive_order, tf.minimum(batch_slots, candidates - 1), batch_dims=1)
    neg_index = tf.gather(
        negative_order,
        tf.clip_by_value(batch_slots - num_pos[:, None], 0, candidates - 1),
        batch_dims=1,
    )
    indices = tf.where(take_pos, pos_index, tf.where(take_neg, neg_index, 0))
    sampled_labels = tf.where(take_pos, 1, tf.where(take_neg, 0, -1))
    return indices, sampled_labels


def _scatter_flags(indices: tf.Tensor, flags: tf.Tensor, size: int) -> tf.Tensor:
    """[B, S] indices into `size` and [B, S] bool flags -> [B, size] bool, True where a
    flagged index points."""
    batch_index = tf.broadcast_to(tf.range(tf.shape(indices)[0])[:, None], tf.shape(indices))
    scatter_index = tf.stack([batch_index, indices], axis=-1)
    counts = tf.scatter_nd(scatter_index, tf.cast(flags, tf.int32), [tf.shape(indices)[0], size])
    return counts > 0


def anchors_inside(anchors: tf.Tensor, image_shape: tf.Tensor) -> tf.Tensor:
    """Anchors whose centre lies in [0, height) x [0, width) of each image.

    Args:
        anchors: [A, 4] yxyx pixels.
        image_shape: [B, 2] (height, width) pixels of each image's region.
    Returns:
        [B, A] bool.
    """
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    image_shape = tf.cast(image_shape, tf.float32)
    centres = 0.5 * (anchors[:, :2] + anchors[:, 2:])  # [A, 2]
    inside = (centres[None] >= 0.0) & (centres[None] < image_shape[:, None, :])
    return tf.reduce_all(inside, axis=-1)


def rpn_targets(
    anchors: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_classes: tf.Tensor,
    gt_is_crowd: tf.Tensor,
    image_shape: tf.Tensor,
    *,
    pos_iou_thr: float = 0.7,
    neg_iou_thr: float = 0.3,
    min_pos_iou: float = 0.3,
    match_low_quality: bool = True,
    crowd_ioa_thr: float = 0.5,
    num: int = 256,
    pos_fraction: float = 0.5,
    neg_pos_ub: float = -1,
    add_gt_as_proposals: bool = False,
    means: Sequence[float],
    stds: Sequence[float],
    legacy_plus_one: bool = False,
    seed=None,
) -> dict[str, tf.Tensor]:
    """Objectness and box targets for every anchor (defaults: the reference's train_cfg.rpn).

    Anchors crossing the image border take part (mmdetection's allowed_border=-1); anchors
    whose centre lies outside `image_shape` (in the padding) are ignored.

    Args:
        anchors: [A, 4] yxyx input pixels, all levels concatenated in increasing level order.
        gt_boxes: [B, G, 4] yxyx input pixels, padding -1.
        gt_classes: [B, G] int32; rows with class <= 0 are padding.
        gt_is_crowd: [B, G] bool.
        image_shape: [B, 2] (height, width) in input pixels of the image inside the padded
            input (image_info[:, 1]), or the padded input size.
        pos_iou_thr .. crowd_ioa_thr: `assign_max_iou` arguments.
        num, pos_fraction, neg_pos_ub: `sample_balanced` arguments. `add_gt_as_proposals`
            is accepted so a whole sampler config can be passed, and must be False.
        means, stds, legacy_plus_one: the RPN box coder (rpn.bbox_coder).
        seed: see `sample_balanced`; for stateless sampling `sampler_seeds(...)["rpn"]`.
    Returns:
        objectness: [B, A] float32, 1 for positive anchors, 0 otherwise.
        objectness_weight: [B, A] float32, 1 for sampled anchors (positive or negative).
        box_deltas: [B, A, 4] float32 encoded vs the matched gt for positives, 0 otherwise.
        box_weight: [B, A] float32, 1 for sampled positives.
        labels: [B, A] int32, the assignment (1, 0, -1) before sampling.
    """
    if add_gt_as_proposals:
        raise ValueError(
            "rpn_targets: add_gt_as_proposals does not apply to anchors; "
            "set train_cfg.rpn.sampler.add_gt_as_proposals to false"
        )
    anchors = tf.convert_to_tensor(anchors, tf.float32)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    num_anchors = anchors.shape[0]
    batch = tf.shape(gt_boxes)[0]
    batched_anchors = tf.broadcast_to(anchors[None], [batch, num_anchors, 4])

    labels, matched_gt = assign_max_iou(
        batched_anchors,
        gt_boxes,
        gt_classes > 0,
        gt_is_crowd,
        pos_iou_thr=pos_iou_thr,
        neg_iou_thr=neg_iou_thr,
        min_pos_iou=min_pos_iou,
        match_low_quality=match_low_quality,
        boxes_valid=anchors_inside(anchors, image_shape),
        crowd_ioa_thr=crowd_ioa_thr,
    )
    indices, sampled_labels = sample_balanced(
        labels, num=num, pos_fraction=pos_fraction, neg_pos_ub=neg_pos_ub, seed=seed
    )
    sampled = _scatter_flags(indices, sampled_labels >= 0, num_anchors)
    positive = labels == 1

    matched_boxes = tf.gather(gt_boxes, matched_gt, batch_dims=1)
    deltas = encode_boxes(
        matched_boxes, batched_anchors, means, stds, legacy_plus_one=legacy_plus_one
    )
    return {
        "objectness": tf.cast(positive, tf.float32),
        "objectness_weight": tf.cast(sampled, tf.float32),
        "box_deltas": tf.where(positive[..., None], deltas, 0.0),
        "box_weight": tf.cast(sampled & positive, tf.float32),
        "labels": labels,
    }


def rcnn_targets(
    proposals: tf.Tensor,
    proposals_valid: tf.Tensor,
    gt_boxes: tf.Tensor,
    gt_classes: tf.Tensor,
    gt_is_crowd: tf.Tensor,
    *,
    pos_iou_thr: float = 0.5,
    neg_iou_thr: float = 0.5,
    min_pos_iou: float = 0.5,
    match_low_quality: bool = True,
    crowd_ioa_thr: float = 0.5,
    num: int = 512,
    pos_fraction: float = 0.25,
    neg_pos_ub: float = -1,
    add_gt_as_proposals: bool = True,
    means: Sequence[float],
    stds: Sequence[float],
    legacy_plus_one: bool = False,
    seed=None,
) -> dict[str, tf.Tensor]:
    """Sample RoIs from the proposals and give them class and box targets (defaults: the
    reference's train_cfg.rcnn and bbox_head.bbox_coder).

    Args:
        proposals: [B, N, 4] yxyx input pixels.
        proposals_valid: [B, N] bool, False for padding proposals.
        gt_boxes: [B, G, 4] yxyx input pixels, padding -1.
        gt_classes: [B, G] int32 contiguous classes (1..), padding -1.
        gt_is_crowd: [B, G] bool.
        pos_iou_thr .. crowd_ioa_thr: `assign_max_iou` arguments.
        num, pos_fraction, neg_pos_ub: `sample_balanced` arguments; S = num.
        add_gt_as_proposals: append the valid non-crowd gt boxes to the proposals first
            (N -> N + G candidates), so every gt has at least one positive RoI.
        means, stds, legacy_plus_one: the R-CNN box coder (bbox_head.bbox_coder).
        seed: see `sample_balanced`; for stateless sampling `sampler_seeds(...)["rcnn"]`.
    Returns:
        rois: [B, S, 4] yxyx input pixels; zeros where roi_valid is False.
        roi_valid: [B, S] bool, False for padding when too few candidates.
        class_targets: [B, S] int32, the matched gt class for positives, 0 otherwise.
        box_deltas: [B, S, 4] float32 encoded vs the matched gt for positives, 0 otherwise.
        box_weight: [B, S] float32, 1 for positives.
        matched_gt: [B, S] int32 index into G for positives, 0 otherwise.
        matched_gt_boxes: [B, S, 4] the matched gt box for positives, zeros otherwise.
        positive: [B, S] bool.
    """
    proposals = tf.convert_to_tensor(proposals, tf.float32)
    proposals_valid = tf.cast(proposals_valid, tf.bool)
    gt_boxes = tf.convert_to_tensor(gt_boxes, tf.float32)
    gt_classes = tf.convert_to_tensor(gt_classes, tf.int32)
    gt_is_crowd = tf.cast(gt_is_crowd, tf.bool)
    gt_valid = gt_classes > 0

    candidates, candidates_valid = proposals, proposals_valid
    if add_gt_as_proposals:
        candidates = tf.concat([proposals, gt_boxes], axis=1)
        candidates_valid = tf.concat([proposals_valid, gt_valid & ~gt_is_crowd], axis=1)

    labels, matched_gt = assign_max_iou(
        candidates,
        gt_boxes,
        gt_valid,
        gt_is_crowd,
        pos_iou_thr=pos_iou_thr,
        neg_iou_thr=neg_iou_thr,
        min_pos_iou=min_pos_iou,
        match_low_quality=match_low_quality,
        boxes_valid=candidates_valid,
        crowd_ioa_thr=crowd_ioa_thr,
    )
    indices, sampled_labels = sample_balanced(
        labels, num=num, pos_fraction=pos_fraction, neg_pos_ub=neg_pos_ub, seed=seed
    )
    roi_valid = sampled_labels >= 0
    positive = sampled_labels == 1
    rois = tf.where(roi_valid[..., None], tf.gather(candidates, indices, batch_dims=1), 0.0)
    roi_gt = tf.where(positive, tf.gather(matched_gt, indices, batch_dims=1), 0)
    matched_boxes = tf.where(positive[..., None], tf.gather(gt_boxes, roi_gt, batch_dims=1), 0.0)
    deltas = encode_boxes(matched_boxes, rois, means, stds, legacy_plus_one=legacy_plus_one)
    return {
        "rois": rois,
        "roi_valid": roi_valid,
        "class_targets": tf.where(positive, tf.gather(gt_classes, roi_gt, batch_dims=1), 0),
        "box_deltas": tf.where(positive[..., None], deltas, 0.0),
        "box_weight": tf.cast(positive, tf.float32),
        "matched_gt": roi_gt,
        "matched_gt_boxes": matched_boxes,
        "positive": positive,
    }


def mask_targets(
    rois: tf.Tensor,
    matched_gt_boxes: tf.Tensor,
    gt_masks: tf.Tensor,
    matched_gt: tf.Tensor,
    *,
    mask_size: int = 28,
    binarize: bool = False,
    method: str = "crop_and_resize",
) -> tf.Tensor:
    """The part of each RoI's matched instance mask under the RoI, at mask_size x mask_size.

    `gt_masks` hold each instance's mask over its own gt box, so the RoI is expressed in the
    gt box's frame and cut out of it with `tf.image.crop_and_resize`. Sampling is pixel-centre
    aligned: output pixel j of an RoI samples the point y1 + (j + 0.5) * height / mask_size,
    and mask pixel i covers the gt box rows [i, i + 1) * gt_height / M. Outside the gt box the
    mask is 0 (half-way at its border). The result equals cropping the instance's full-image
    mask at the RoI and resizing, up to bilinear resampling.

    Args:
        rois: [B, K, 4] yxyx input pixels.
        matched_gt_boxes: [B, K, 4] yxyx input pixels, the gt box of each RoI's instance.
        gt_masks: [B, G, M, M] uint8 or float in [0, 1], each instance over its gt box.
        matched_gt: [B, K] int32 index into G.
        mask_size: output side (the reference's train_cfg.rcnn.mask_size, 28).
        binarize: round the targets to {0, 1} at 0.5 (mmdetection does).
        method: "crop_and_resize" (`tf.image.crop_and_resize`, no XLA kernel) or "gather"
            (the same samples, read with gathers as `crop_and_resize` reads them:
            `modeling/bilinear.py`, the technique of Model Garden's
            `multilevel_crop_and_resize` in `official/vision/ops/spatial_transform_ops.py`;
            compiles with `tf.function(jit_compile=True)`, equal up to float rounding).
    Returns:
        [B, K, mask_size, mask_size] float32 in [0, 1].
    """
    if method not in MASK_TARGET_METHODS:
        raise ValueError(f"mask target method must be one of {MASK_TARGET_METHODS}, got {method!r}")
    rois = tf.convert_to_tensor(rois, tf.float32)
    matched_gt_boxes = tf.convert_to_tensor(matched_gt_boxes, tf.float32)
    matched_gt = tf.convert_to_tensor(matched_gt, tf.int32)
    masks = tf.cast(gt_masks, tf.float32)
    num_gts, mask_height, mask_width = masks.shape[1], masks.shape[2], masks.shape[3]
    batch = tf.shape(rois)[0]
    num_rois = rois.shape[1]

    # One zero pixel around every mask: samples between the gt box border and the first
    # pixel centre blend towards 0 instead of snapping to the extrapolation value.
    masks = tf.pad(
        tf.reshape(masks, [-1, mask_height, mask_width, 1]), [[0, 0], [1, 1], [1, 1], [0, 0]]
    )
    box_indices = tf.reshape(matched_gt + tf.range(batch)[:, None] * num_gts, [-1])

    gy1, gx1, gy2, gx2 = tf.unstack(matched_gt_boxes, 4, axis=-1)
    ry1, rx1, ry2, rx2 = tf.unstack(rois, 4, axis=-1)
    gt_height = tf.maximum(gy2 - gy1, 1e-6)
    gt_width = tf.maximum(gx2 - gx1, 1e-6)

    def sample_positions(start, length, gt_start, gt_length, mask_length):
        # Index (in the padded mask) of the first and last output pixel centres, normalised
        # by (padded size - 1) as crop_and_resize expects.
        first = (start - gt_start + 0.5 * length / mask_size) / gt_length * mask_length + 0.5
        last = (start - gt_start + (mask_size - 0.5) * length / mask_size) / gt_length
        last = last * mask_length + 0.5
        return first / (mask_length + 1), last / (mask_length + 1)

    y_first, y_last = sample_positions(ry1, ry2 - ry1, gy1, gt_height, mask_height)
    x_first, x_last = sample_positions(rx1, rx2 - rx1, gx1, gt_width, mask_width)
    crop_boxes = tf.reshape(tf.stack([y_first, x_first, y_last, x_last], axis=-1), [-1, 4])
    if method == "gather":
        crops = _crop_and_resize_by_gather(masks, crop_boxes, box_indices, mask_size)
    else:
        crops = tf.image.crop_and_resize(
            masks, crop_boxes, box_indices, [mask_size, mask_size], method="bilinear"
        )
    targets = tf.reshape(crops, [batch, num_rois, mask_size, mask_size])
    targets = tf.clip_by_value(targets, 0.0, 1.0)
    if binarize:
        targets = tf.cast(targets >= 0.5, tf.float32)
    return targets


def _crop_and_resize_by_gather(
    images: tf.Tensor, boxes: tf.Tensor, box_indices: tf.Tensor, crop_size: int
) -> tf.Tensor:
    """`tf.image.crop_and_resize(images, boxes, box_indices, [S, S])` (bilinear,
    extrapolation 0) computed with gathers, sample positions by crop_and_resize's own
    arithmetic: in = y1 * (H - 1) + j * (y2 - y1) * (H - 1) / (S - 1).

    Args:
        images: [N, H, W, C] float32 with static H, W.
        boxes: [K, 4] normalised yxyx (crop_and_resize's convention).
        box_indices: [K] int32 into N.
        crop_size: S.
    Returns:
        [K, S, S, C] float32.
    """
    _, height, width, channels = images.shape
    extent = tf.constant([height - 1.0, width - 1.0])
    near, far = boxes[:, :2], boxes[:, 2:]
    if crop_size > 1:
        scale = (far - near) * extent / float(crop_size - 1)
        index = tf.range(crop_size, dtype=tf.float32)[None, :, None]
        positions = near[:, None, :] * extent + index * scale[:, None, :]
    else:
        positions = (0.5 * (near + far) * extent)[:, None, :]
    y = crop_and_resize_samples(positions[:, :, 0], tf.constant([[float(height)]]))
    x = crop_and_resize_samples(positions[:, :, 1], tf.constant([[float(width)]]))
    table = tf.reshape(images, [-1, channels])
    return gather_bilinear(
        table, box_indices * (height * width), tf.fill(tf.shape(box_indices), width), y, x
    )


def _step_seed(seed: int, stream: str, step, replica) -> tf.Tensor | None:
    """The stateless seed of one sampler (`stream`) in one step on one replica; None (the
    stateful generator) without a step."""
    if step is None:
        return None
    return sampler_seeds(sampling_seed(seed, step, 0 if replica is None else replica))[stream]


class _TargetSampler(Part):
    """Assign, sample and encode: the options shared by `AnchorLabeler` and `RoISampler`."""

    def __init__(self, *, assigner: dict, sampler: dict, box_coder: dict, seed: int = 0, **kwargs):
        super().__init__(
            {"assigner": assigner, "sampler": sampler, "box_coder": box_coder, "seed": seed},
            **kwargs,
        )
        self.arguments = {**assigner, **sampler, **box_coder}
        self.seed = int(seed)
        self.num_samples = int(sampler["num"])


@keras.saving.register_keras_serializable(package="maskspine")
class AnchorLabeler(_TargetSampler):
    """RPN targets: every anchor assigned to a ground-truth box, a balanced sample of them
    drawn, box targets encoded (`rpn_targets`; train_cfg.rpn, rpn.bbox_coder).

    Args:
        assigner: `assign_max_iou` settings (`pos_iou_thr`, `neg_iou_thr`, `min_pos_iou`,
            `match_low_quality`).
        sampler: `sample_balanced` settings (`num`, `pos_fraction`, `neg_pos_ub`,
            `add_gt_as_proposals` False).
        box_coder: `means`, `stds`, `legacy_plus_one`.
        seed: the run's seed: with a step, the sample is drawn statelessly from (seed, step,
            replica), so that a resumed run draws what the uninterrupted run drew.

    Call: (anchors [A, 4], gt_boxes [B, G, 4], gt_classes [B, G], gt_is_crowd [B, G],
    image_shape [B, 2], step=None, replica=None) -> `rpn_targets`' dict.
    """

    def call(
        self, anchors, gt_boxes, gt_classes, gt_is_crowd, image_shape, step=None, replica=None
    ):
        return rpn_targets(
            anchors,
            gt_boxes,
            gt_classes,
            gt_is_crowd,
            image_shape,
            **self.arguments,
            seed=_step_seed(self.seed, "rpn", step, replica),
        )


@keras.saving.register_keras_serializable(package="maskspine")
class RoISampler(_TargetSampler):
    """R-CNN targets: proposals (and the ground truth) assigned, a balanced sample of RoIs
    drawn, class and box targets (`rcnn_targets`; train_cfg.rcnn, bbox_head.bbox_coder).

    Args: as `AnchorLabeler`'s (the sampler's `num` is the RoIs per image, S).

    Call: (proposals [B, N, 4], valid [B, N], gt_boxes, gt_classes, gt_is_crowd, step=None,
    replica=None) -> `rcnn_targets`' dict (rois [B, S, 4], ...).
    """

    def call(self, proposals, valid, gt_boxes, gt_classes, gt_is_crowd, step=None, replica=None):
        return rcnn_targets(
            proposals,
            valid,
            gt_boxes,
            gt_classes,
            gt_is_crowd,
            **self.arguments,
            seed=_step_seed(self.seed, "rcnn", step, replica),
        )


@keras.saving.register_keras_serializable(package="maskspine")
class MaskSampler(Part):
    """The RoIs the mask head learns from: the first `num_masks` positives of each image's
    sample (in sampled order), each one's class and its mask target (`mask_targets`).

    Args:
        num_masks: RoIs per image for the mask head (mask_roi.sample_num, at most the
            R-CNN sample's size).
        mask_size: the targets' side (train_cfg.rcnn.mask_size).
        method: "crop_and_resize", or "gather" (XLA).

    Call: (rcnn targets `RoISampler` gave, gt_boxes [B, G, 4], gt_masks [B, G, M, M]) ->
    {"rois" [B, K, 4], "classes" [B, K] (each positive's class, 0 for padding: the mask
    head's channel), "targets" [B, K, mask_size, mask_size], "positive" [B, K]}.
    """

    def __init__(
        self, *, num_masks: int, mask_size: int, method: str = "crop_and_resize", **kwargs
    ):
        super().__init__(
            {"num_masks": num_masks, "mask_size": mask_size, "method": method}, **kwargs
        )
        self.num_masks = int(num_masks)
        self.mask_size = int(mask_size)
        self.method = method

    def call(self, rcnn, gt_boxes, gt_masks):
        positive = rcnn["positive"]
        # top_k keeps the lower index first among ties: positives in sampled order.
        picked = tf.math.top_k(tf.cast(positive, tf.float32), k=self.num_masks).indices
        rois = tf.gather(rcnn["rois"], picked, batch_dims=1)
        picked_positive = tf.gather(positive, picked, batch_dims=1)
        classes = tf.gather(rcnn["class_targets"], picked, batch_dims=1)
        matched = tf.gather(rcnn["matched_gt"], picked, batch_dims=1)
        targets = mask_targets(
            rois,
            tf.gather(tf.cast(gt_boxes, tf.float32), matched, batch_dims=1),
            gt_masks,
            matched,
            mask_size=self.mask_size,
            method=self.method,
        )
        return {
            "rois": rois,
            "classes": tf.where(picked_positive, classes, 0),
            "targets": targets,
            "positive": picked_positive,
        }
