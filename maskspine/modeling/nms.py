"""The padded NMS rule of tensorflow/tpu and Model Garden, batched with static shapes.

The model's default NMS is `tf.image.combined_non_max_suppression` (a box is suppressed by
a better-scored one when their IoU is > the threshold). The code that trained the published
SpineNet Mask R-CNN checkpoints uses a tiled "padded" NMS instead (tensorflow/tpu
`models/official/detection/ops/nms.py`, Model Garden `official/vision/ops/nms.py`:
`sorted_non_max_suppression_padded`), whose rules differ at the edges: a box is suppressed
at IoU >= the threshold, boxes are taken in the order of a stable descending sort (ties to
the lower index), and a box whose four coordinates are all <= 0 (a padding "dot") is never
selected. TensorFlow ships the same algorithm as `tf.image.non_max_suppression_padded`;
`padded_nms` runs it on input sorted here, so ties resolve as in the originals.

Both TensorFlow ops stop `tf.function(jit_compile=True)`: `CombinedNonMaxSuppression` has
no XLA kernel, and the padded rule's callers cut rows to run-time lengths. The
`implementation="tiled"` option of `padded_nms` and `combined_nms` (used by
`rpn.generate_proposals` and `detection.detect_boxes` through their `nms_implementation`)
computes either rule with `tiled_nms`: static shapes, `tf.while_loop` over tiles of boxes,
every op with an XLA kernel. It is the tiling of Model Garden's
`sorted_non_max_suppression_padded` (`official/vision/ops/nms.py`; TF's
`non_max_suppression_padded`): boxes sorted by score are cut into tiles; each tile is
first suppressed by the kept boxes of the earlier tiles (tile against tile), then within
itself by iterating "a box is kept unless a kept, better box of the tile overlaps it" to
its fixed point (the greedy result); the loop ends once every row holds `max_output_size`
kept boxes or no later tile holds a candidate. Each rule's own IoU arithmetic and
threshold comparison are reproduced, so the kept boxes are the TensorFlow op's.
"""

from __future__ import annotations

import functools

import tensorflow as tf

from maskspine.choices import NMS_IMPLEMENTATIONS, NMS_RULES

#: `nms_rule` values of the proposal and detection configs.

#: `implementation` values (the default first): TensorFlow's NMS ops, or `tiled_nms`.


#: Boxes compared at once by the tiled NMS. The result does not depend on it (tiles only
#: parallelise the greedy pass); 64 is far faster on CPU than TF's default 512 for the
#: per-class detection NMS, where most rows hold few boxes.
NMS_TILE_SIZE = 64


def padded_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    max_output_size: int,
    iou_threshold: float,
    *,
    implementation: str = "tf_image",
) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy NMS of boxes already sorted by descending score, with the padded rule.

    Args:
        boxes: [B, N, 4] yxyx, sorted by descending `scores` within each row (N may be
            dynamic).
        scores: [B, N] float, descending (only the order matters here).
        max_output_size: K, the most boxes kept per row.
        iou_threshold: a box is dropped when its IoU with a kept, better box is >= this.
        implementation: "tf_image" (`tf.image.non_max_suppression_padded`) or "tiled"
            (`tiled_nms`, static shapes, compiles with XLA; N must then be static).
    Returns:
        indices: [B, K] int32 into N of the kept boxes in score order; rows past
            `num_valid` are 0 (padding).
        num_valid: [B] int32.
    """
    _check_implementation(implementation)
    if implementation == "tiled":
        boxes = tf.cast(boxes, tf.float32)
        return tiled_nms(
            boxes,
            tf.reduce_any(tf.not_equal(boxes, 0.0), axis=-1),
            max_output_size=max_output_size,
            iou_threshold=iou_threshold,
            rule="padded",
        )
    indices, num_valid = tf.image.non_max_suppression_padded(
        tf.cast(boxes, tf.float32),
        tf.cast(scores, tf.float32),
        max_output_size,
        iou_threshold=iou_threshold,
        pad_to_max_output_size=True,
        sorted_input=True,
        canonicalized_coordinates=True,
        tile_size=NMS_TILE_SIZE,
    )
    return tf.cast(indices, tf.int32), tf.cast(num_valid, tf.int32)


def _check_implementation(implementation: str) -> None:
    if implementation not in NMS_IMPLEMENTATIONS:
        raise ValueError(
            f"nms_implementation must be one of {NMS_IMPLEMENTATIONS}, got {implementation!r}"
        )


def combined_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    *,
    max_output_size_per_class: int,
    max_total_size: int,
    iou_threshold: float,
    score_threshold: float,
    implementation: str = "tf_image",
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Per-class greedy NMS, then the best `max_total_size` over the classes: the rule of
    `tf.image.combined_non_max_suppression(pad_per_class=False, clip_boxes=False)`.

    Per class, the boxes scoring > `score_threshold` are taken best first; one is dropped
    when its IoU with a kept box of the class is > `iou_threshold` (IoU 0 when either box
    has no area; coordinates in either order); at most
    `min(max_output_size_per_class, N)` are kept per class. The kept boxes of all classes
    are ranked by score.

    Args:
        boxes: [B, N, Q, 4] yxyx (any units), Q = 1 (shared by the classes) or C.
        scores: [B, N, C] float.
        max_output_size_per_class, max_total_size, iou_threshold, score_threshold: as the
            TensorFlow op's.
        implementation: "tf_image" (the TensorFlow op, no XLA kernel) or "tiled" (per class
            a stable descending sort, `tiled_nms` with the op's IoU arithmetic, and one
            `top_k` over the classes; static shapes, compiles with XLA; N, Q, C static).
            Equal scores: the op's order among them is that of its heap (unspecified);
            "tiled" takes the lower box index first within a class, the lower class first
            across classes.

    Returns:
        boxes [B, K, 4], scores [B, K], classes [B, K] int32 (0-based), num_valid [B] int32
        with K = max_total_size; zeros after `num_valid`.
    """
    _check_implementation(implementation)
    if implementation == "tf_image":
        nmsed_boxes, nmsed_scores, nmsed_classes, num_valid = tf.image.combined_non_max_suppression(
            boxes,
            scores,
            max_output_size_per_class=max_output_size_per_class,
            max_total_size=max_total_size,
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            pad_per_class=False,
            clip_boxes=False,
        )
        return nmsed_boxes, nmsed_scores, tf.cast(nmsed_classes, tf.int32), num_valid

    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    batch = tf.shape(scores)[0]
    num_boxes, num_classes = scores.shape[1], scores.shape[2]
    per_class = min(max_output_size_per_class, num_boxes)
    class_scores = tf.transpose(scores, [0, 2, 1])  # [B, C, N]
    class_boxes = tf.transpose(
        tf.broadcast_to(boxes, [batch, num_boxes, num_classes, 4]), [0, 2, 1, 3]
    )  # [B, C, N, 4]
    sorted_scores, order = sort_candidates(class_scores, score_threshold)
    sorted_boxes = tf.gather(class_boxes, order, batch_dims=2)
    flat_boxes = tf.reshape(sorted_boxes, [-1, num_boxes, 4])
    flat_scores = tf.reshape(sorted_scores, [-1, num_boxes])
    indices, kept = tiled_nms(
        flat_boxes,
        flat_scores > score_threshold,
        max_output_size=per_class,
        iou_threshold=iou_threshold,
        rule="combined",
    )
    slot_valid = tf.range(per_class)[None, :] < kept[:, None]
    kept_boxes = tf.reshape(
        tf.gather(flat_boxes, indices, batch_dims=1), [batch, num_classes * per_class, 4]
    )
    kept_scores = tf.where(slot_valid, tf.gather(flat_scores, indices, batch_dims=1), float("-inf"))
    kept_scores = tf.reshape(kept_scores, [batch, num_classes * per_class])
    # Classes in order, each with its slots in score order: top_k's ties then go to the
    # lower class, then the better rank.
    classes = tf.repeat(tf.range(num_classes, dtype=tf.int32), per_class)
    total = min(max_total_size, num_classes * per_class)
    best_scores, best = tf.math.top_k(kept_scores, k=total, sorted=True)
    valid = best_scores > float("-inf")
    out_boxes = tf.where(valid[..., None], tf.gather(kept_boxes, best, batch_dims=1), 0.0)
    out_scores = tf.where(valid, best_scores, 0.0)
    out_classes = tf.where(valid, tf.gather(classes, best), 0)
    if total < max_total_size:
        pad = max_total_size - total
        out_boxes = tf.pad(out_boxes, [[0, 0], [0, pad], [0, 0]])
        out_scores = tf.pad(out_scores, [[0, 0], [0, pad]])
        out_classes = tf.pad(out_classes, [[0, 0], [0, pad]])
    num_valid = tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)
    return out_boxes, out_scores, out_classes, num_valid


#: `sort_candidates` sorts only the first this many per row when no row has more
#: candidates (the smallest that fits), else every row whole.
SORT_CAPS = (64, 256)


def sort_candidates(
    scores: tf.Tensor, threshold: float, *, caps: tuple[int, ...] = SORT_CAPS
) -> tuple[tf.Tensor, tf.Tensor]:
    """Each row's scores above `threshold` in descending order (ties to the lower index),
    first, with static shapes.

    XLA sorts slowly on CPU (about 0.15 us per sorted element), and per-class detection
    rows hold few candidates: when no row has more than a cap of `caps` candidates, a
    `top_k` of the smallest such cap suffices; otherwise every row is sorted. The branches
    are a `tf.cond` chain (all compiled, one runs).

    Args:
        scores: [..., N] float32, N static.
        threshold: scores at or below it are not candidates.
        caps: increasing static sizes.
    Returns:
        sorted_scores [..., N]: the candidates' scores in order, then the others (past a
            cap: -inf); order [..., N] int32, their indices into N (past a cap: 0).
    """
    num_boxes = scores.shape[-1]
    if num_boxes is None:
        raise ValueError("sort_candidates: the number of boxes (scores.shape[-1]) must be static")
    caps = [cap for cap in caps if cap < num_boxes]

    def first_sorted(k):
        def branch():
            values, order = tf.math.top_k(scores, k=k, sorted=True)
            if k == num_boxes:
                return values, order
            pad = [[0, 0]] * (len(scores.shape) - 1) + [[0, num_boxes - k]]
            return tf.pad(values, pad, constant_values=float("-inf")), tf.pad(order, pad)

        return branch

    most = tf.reduce_max(tf.reduce_sum(tf.cast(scores > threshold, tf.int32), axis=-1))
    result = first_sorted(num_boxes)
    for cap in reversed(caps):
        result = functools.partial(tf.cond, most <= cap, first_sorted(cap), result)
    return result()


#: `rule` values of `tiled_nms`.
TILED_NMS_RULES = NMS_RULES


def tiled_nms(
    boxes: tf.Tensor,
    candidates: tf.Tensor,
    *,
    max_output_size: int,
    iou_threshold: float,
    rule: str,
    tile_size: int = NMS_TILE_SIZE,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Greedy NMS of rows of boxes sorted best first, with static shapes (see the module
    docstring for the tiling).

    Rules:
        "combined": `tf.image.combined_non_max_suppression`'s CPU kernel: IoU of the
            boxes with coordinates put in order, 0 when either has no area, a box dropped
            at IoU > `iou_threshold`; only candidates are kept or suppress.
        "padded": `tf.image.non_max_suppression_padded` / Model Garden's: IoU =
            intersection / (union + 1e-8), a box dropped at IoU >= `iou_threshold`; every
            box not suppressed suppresses, but only a box with a coordinate > 0 is
            selected (all-zero padding boxes are never selected nor suppress).

    Args:
        boxes: [R, N, 4] yxyx, each row sorted by descending score; N static.
        candidates: [R, N] bool, the boxes that take part ("combined": score above the
            threshold; "padded": any non-zero coordinate). Later non-candidates cost
            nothing: the loop ends after the last tile holding a candidate.
        max_output_size: K, the most boxes selected per row (static).
        iou_threshold: in (0, 1].
        rule: "combined" or "padded".
        tile_size: boxes compared at once; the result does not depend on it.

    Returns:
        indices: [R, K] int32 into N of the selected boxes in order; 0 after `num_valid`.
        num_valid: [R] int32, min(selected, K).
    """
    if rule not in TILED_NMS_RULES:
        raise ValueError(f"rule must be one of {TILED_NMS_RULES}, got {rule!r}")
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    candidates = tf.convert_to_tensor(candidates, tf.bool)
    num_boxes = boxes.shape[1]
    if num_boxes is None:
        raise ValueError("tiled_nms: the number of boxes (boxes.shape[1]) must be static")
    rows = tf.shape(boxes)[0]
    num_tiles = max(-(-max(num_boxes, max_output_size, 1) // tile_size), 1)
    padded = num_tiles * tile_size
    boxes = tf.pad(boxes, [[0, 0], [0, padded - num_boxes], [0, 0]])
    candidates = tf.pad(candidates, [[0, 0], [0, padded - num_boxes]])
    tiled_boxes = tf.reshape(boxes, [rows, num_tiles, tile_size, 4])
    tiled_candidates = tf.reshape(candidates, [rows, num_tiles, tile_size])
    # Which kept boxes count as selected (the padded rule never selects a box without a
    # positive coordinate, though such a box, kept, still suppresses).
    selectable = tiled_candidates
    if rule == "padded":
        selectable = tf.reduce_any(tiled_boxes > 0.0, axis=-1)
    position = tf.range(padded, dtype=tf.int32)
    last_candidate = tf.reduce_max(tf.where(candidates, position[None, :], -1))
    tiles_needed = last_candidate // tile_size + 1  # 0 without candidates
    earlier = tf.range(tile_size)[:, None] < tf.range(tile_size)[None, :]  # [j, i]: j < i

    def suppresses(better: tf.Tensor, tile: tf.Tensor) -> tf.Tensor:
        """[R, T, T] bool: box j of `better` would suppress box i of `tile`."""
        return _overlap_exceeds(better, tile, iou_threshold, rule)

    def tile_body(t, kept, count):
        tile = tf.gather(tiled_boxes, t, axis=1)  # [R, T, 4]
        active = tf.gather(tiled_candidates, t, axis=1)  # [R, T]

        def cross(u, active):
            better = tf.gather(tiled_boxes, u, axis=1)
            better_kept = tf.gather(kept, u, axis=1)
            hit = suppresses(better, tile) & better_kept[:, :, None]
            return u + 1, active & ~tf.reduce_any(hit, axis=1)

        _, active = tf.while_loop(lambda u, _: u < t, cross, (tf.constant(0), active))
        within = suppresses(tile, tile) & earlier[None]

        def settle(_, keep):
            new = active & ~tf.reduce_any(within & keep[:, :, None], axis=1)
            return tf.reduce_any(new != keep), new

        _, keep = tf.while_loop(lambda changed, _: changed, settle, (tf.constant(True), active))
        at_tile = tf.equal(tf.range(num_tiles), t)[None, :, None]
        kept = kept | (at_tile & keep[:, None, :])
        selected = keep & tf.gather(selectable, t, axis=1)
        return t + 1, kept, count + tf.reduce_sum(tf.cast(selected, tf.int32), axis=1)

    def more_tiles(t, _, count):
        return (t < tiles_needed) & tf.reduce_any(count < max_output_size)

    _, kept, count = tf.while_loop(
        more_tiles,
        tile_body,
        (
            tf.constant(0),
            tf.zeros([rows, num_tiles, tile_size], tf.bool),
            tf.zeros([rows], tf.int32),
        ),
    )
    selected = tf.reshape(kept & selectable, [rows, padded])
    # The first K selected positions, compacted: the i-th selected box goes to slot i (a
    # segment max over slots; the unselected and those past K go to a discarded slot K).
    rank = tf.cumsum(tf.cast(selected, tf.int32), axis=1) - 1
    slot = tf.where(selected & (rank < max_output_size), rank, max_output_size)
    row = tf.range(rows)[:, None] * (max_output_size + 1)
    compact = tf.math.unsorted_segment_max(
        tf.broadcast_to(position[None, :], [rows, padded]),
        row + slot,
        rows * (max_output_size + 1),
    )
    compact = tf.reshape(compact, [rows, max_output_size + 1])[:, :max_output_size]
    num_valid = tf.minimum(count, max_output_size)
    slot_valid = tf.range(max_output_size)[None, :] < num_valid[:, None]
    return tf.where(slot_valid, compact, 0), num_valid


def _overlap_exceeds(
    better: tf.Tensor, boxes: tf.Tensor, iou_threshold: float, rule: str
) -> tf.Tensor:
    """[R, P, Q] bool: IoU of better[:, j] and boxes[:, i] over the rule's threshold."""
    threshold = tf.constant(iou_threshold, tf.float32)
    if rule == "combined":
        better = tf.concat(
            [
                tf.minimum(better[..., :2], better[..., 2:]),
                tf.maximum(better[..., :2], better[..., 2:]),
            ],
            axis=-1,
        )
        boxes = tf.concat(
            [
                tf.minimum(boxes[..., :2], boxes[..., 2:]),
                tf.maximum(boxes[..., :2], boxes[..., 2:]),
            ],
            axis=-1,
        )
    by1, bx1, by2, bx2 = (better[:, :, None, k] for k in range(4))
    y1, x1, y2, x2 = (boxes[:, None, :, k] for k in range(4))
    better_area = (by2 - by1) * (bx2 - bx1)
    area = (y2 - y1) * (x2 - x1)
    intersection = tf.maximum(tf.minimum(by2, y2) - tf.maximum(by1, y1), 0.0) * tf.maximum(
        tf.minimum(bx2, x2) - tf.maximum(bx1, x1), 0.0
    )
    if rule == "combined":
        # The kernel's IOU(): 0 when either box has no area; suppressed at IoU > threshold.
        iou = intersection / (area + better_area - intersection)
        return (better_area > 0.0) & (area > 0.0) & (iou > threshold)
    iou = intersection / (better_area + area - intersection + 1e-8)
    return iou >= threshold
