"""Mask R-CNN as a composition of parts (Model Garden's `official/vision/modeling/
maskrcnn_model.py` shape, our own code): the model holds its parts and runs them; every
option and convention lives in the part it changes, built by `modeling.factory` from the
config.

    model = build_mask_rcnn(config)    # maskspine.modeling.factory
    outputs = model(images)            # inference dict (docs/architecture.md)
    losses = model.compute_losses(batch, training=True, step=step)
    model.compile(optimizer=...); model.fit(dataset)   # train_step uses compute_losses

| part | what it does | config block |
| --- | --- | --- |
| `backbone` | SpineNet: images -> features P3..P7 | backbone |
| `rpn_head` | objectness and box deltas per anchor and level | rpn |
| `anchor_generator` | the anchors of the input size (constants) | rpn.anchor_generator |
| `image_window` | the region boxes are clipped to | clip_boxes_to |
| `proposal_generator` | decode, select, NMS -> proposals | train_cfg.rpn_proposal, test_cfg.rpn |
| `anchor_labeler` | RPN targets: assign, sample, encode | train_cfg.rpn |
| `roi_sampler` | R-CNN targets: assign, sample, encode | train_cfg.rcnn, roi.sample_num |
| `roi_aligner` | multilevel RoIAlign for the box head | roi |
| `box_head` | class logits and box deltas per RoI | bbox_head |
| `detection_generator` | class-wise decode and NMS -> detections | test_cfg.rcnn |
| `mask_sampler` | the mask head's RoIs and mask targets | mask_roi, train_cfg.rcnn |
| `mask_roi_aligner` | multilevel RoIAlign for the mask head | mask_roi |
| `mask_head` | mask logits of each RoI's class | mask_head |
| `loss` | the weighted losses | rpn, bbox_head, mask_head losses |

Inference (`call`): backbone -> RPN head -> proposals -> RoIAlign -> box head -> detections
-> RoIAlign on the detections -> mask head -> sigmoid. Training (`compute_losses`): RPN
targets and losses on all anchors; proposals -> sampled RoIs -> box head losses; the sampled
positives -> mask head loss. The samplers draw statelessly from (seed, step, replica) when
given a step (`train_step` gives the optimizer's), so a resumed run samples what the
uninterrupted one sampled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

LOSS_NAMES = (
    "loss",
    "rpn_cls_loss",
    "rpn_box_loss",
    "rcnn_cls_loss",
    "rcnn_box_loss",
    "mask_loss",
)

#: The parts, in the order they are built and serialized.
PARTS = (
    "backbone",
    "rpn_head",
    "anchor_generator",
    "image_window",
    "proposal_generator",
    "anchor_labeler",
    "roi_sampler",
    "roi_aligner",
    "box_head",
    "detection_generator",
    "mask_sampler",
    "mask_roi_aligner",
    "mask_head",
    "loss",
)


@keras.saving.register_keras_serializable(package="maskspine")
class MaskRCNN(keras.Model):
    """SpineNet Mask R-CNN, composed of the parts of `PARTS` (see the module docstring).

    Call: `model(images)` or `model({"images": ..., "image_info": ...})` with images
    [B, H, W, 3] float32 normalised (H, W the anchors' input size) -> dict of
    `detection_boxes` [B, D, 4] yxyx input pixels, `detection_scores` [B, D],
    `detection_classes` [B, D] int32 (1-based, 0 = padding), `num_detections` [B] int32,
    `detection_masks` [B, D, M, M] float32 probabilities relative to each box
    (D = the detection generator's `max_per_img`). Boxes are clipped to `image_window`'s
    region.

    Args:
        **parts: every part of `PARTS`.
        precision: the policy the parts with weights were created under (float32,
            bfloat16, float16); the model's own inputs and outputs stay float32.
        jit_compile: the parts take XLA's kernels; `compile` compiles `fit`'s step then.
    """

    def __init__(
        self,
        *,
        precision: str = "float32",
        jit_compile: bool = False,
        name: str = "mask_rcnn",
        **parts: Any,
    ) -> None:
        missing = [part for part in PARTS if part not in parts]
        unknown = sorted(set(parts) - set(PARTS) - {"trainable", "dtype"})
        if missing or unknown:
            raise TypeError(f"MaskRCNN parts: missing {missing}, unknown {unknown}")
        if tf.distribute.has_strategy():
            raise RuntimeError(
                "compose MaskRCNN outside a distribution strategy's scope: "
                "build_mask_rcnn(config, strategy=strategy) creates its parts in the scope "
                "and the model outside it, so that fit runs under the strategy in scope then"
            )
        super().__init__(name=name)
        self.precision = precision
        self.xla = bool(jit_compile)
        for part in PARTS:
            setattr(self, part, parts[part])
        self.image_size = tuple(self.anchor_generator.image_size)
        self._anchors = self.anchor_generator.by_level()
        self._all_anchors = self.anchor_generator.concatenated()
        self.loss_trackers: dict[str, keras.metrics.Mean] = {}  # made by `compile`
        self.built = True

    # ------------------------------------------------------------------ inference

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            images, image_info = inputs["images"], inputs.get("image_info")
        else:
            images, image_info = inputs, None
        window = self.image_window(images, image_info)
        features = self.backbone(images, training=False)
        objectness, deltas = self.rpn_head(features, training=False)
        proposals, _, valid = self.proposal_generator(
            objectness, deltas, self._anchors, window, training=False
        )
        class_logits, box_deltas = self.box_head(
            self.roi_aligner(features, proposals), training=False
        )
        detections = self.detection_generator(class_logits, box_deltas, proposals, valid, window)
        detections["detection_masks"] = self.detection_masks(
            features, detections["detection_boxes"], detections["detection_classes"]
        )
        return detections

    def detection_masks(self, features, boxes, classes) -> tf.Tensor:
        """[B, D, M, M] mask probabilities of each detection's own class."""
        mask_logits = self.mask_head(
            self.mask_roi_aligner(features, boxes), classes, training=False
        )
        return tf.sigmoid(tf.cast(mask_logits, tf.float32))

    # ------------------------------------------------------------------ training

    def compute_losses(
        self,
        batch: dict[str, tf.Tensor],
        training: bool = True,
        step: tf.Tensor | int | None = None,
        replica: tf.Tensor | int | None = None,
    ) -> dict[str, tf.Tensor]:
        """All losses for a training batch (docs/architecture.md's batch dict).

        Args:
            step, replica: the global step and the replica's id in sync: the samplers draw
                statelessly from (their seed, step, replica); without a step, from
                TensorFlow's stateful generator.

        Returns:
            float32 scalars: `loss` (the weighted sum), `rpn_cls_loss`, `rpn_box_loss`,
            `rcnn_cls_loss`, `rcnn_box_loss`, `mask_loss` (each already weighted).
        """
        images = batch["images"]
        window = self.image_window(images, batch["image_info"])
        gt_boxes = tf.cast(batch["gt_boxes"], tf.float32)
        gt_classes = tf.cast(batch["gt_classes"], tf.int32)
        gt_is_crowd = tf.cast(batch["gt_is_crowd"], tf.bool)
        features = self.backbone(images, training=training)

        # RPN: targets and losses on every anchor; proposals for the R-CNN
        objectness, deltas = self.rpn_head(features, training=training)
        proposals, _, valid = self.proposal_generator(
            objectness, deltas, self._anchors, window, training=True
        )
        levels = self.anchor_generator.levels
        rpn_targets = self.anchor_labeler(
            self._all_anchors, gt_boxes, gt_classes, gt_is_crowd, window, step=step, replica=replica
        )
        losses = self.loss.rpn(
            tf.concat([objectness[level] for level in levels], axis=1),
            tf.concat([deltas[level] for level in levels], axis=1),
            rpn_targets,
        )

        # R-CNN box head on the sampled RoIs
        rcnn = self.roi_sampler(
            proposals, valid, gt_boxes, gt_classes, gt_is_crowd, step=step, replica=replica
        )
        class_logits, box_deltas = self.box_head(
            self.roi_aligner(features, rcnn["rois"]), training=training
        )
        losses.update(self.loss.rcnn(class_logits, box_deltas, rcnn))

        # Mask head on the sampled positives, each for its own class
        masks = self.mask_sampler(rcnn, gt_boxes, batch["gt_masks"])
        mask_logits = self.mask_head(
            self.mask_roi_aligner(features, masks["rois"]), masks["classes"], training=training
        )
        losses.update(self.loss.mask(mask_logits, masks))
        losses["loss"] = self.loss(losses)
        return losses

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, then the loss trackers and the optimizer's variables are
        created at once (under the strategy scope `compile` is called in), so `fit` has
        nothing left to build."""
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
        # XLA when the parts were built for it (`factory`: jit_compile resolved true); the
        # default kernels (crop_and_resize, TensorFlow's NMS ops) have no XLA kernels.
        kwargs.setdefault("jit_compile", self.xla)
        super().compile(*args, **kwargs)
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            # The samplers' step seeds: the update about to be made, this replica.
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            losses = self.compute_losses(
                data, training=True, step=self.optimizer.iterations, replica=replica
            )
            # Gradients are summed over replicas: each replica contributes its share.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = losses["loss"] / tf.cast(replicas, tf.float32)
            scaled = self.optimizer.scale_loss(loss)
        weights = self.trainable_weights
        gradients = tape.gradient(scaled, weights)
        self.optimizer.apply_gradients(zip(gradients, weights))
        return self._track(losses)

    def make_train_function(self, force: bool = False) -> Callable[[Any], dict[str, Any]]:
        """`fit`'s function of one step: the batch read and the step in one graph.

        Keras (3.15) calls a `tf.function` of the step from a second `tf.function` that
        reads the iterator; that nesting made the demo's step 3-5 % slower on a CPU (float32,
        oneDNN held to AVX2, 2-core Sapphire Rapids, 2026-12-06; benchmarks/README.md,
        "Keras' nested step function"). Keras' own function is kept where the step is
        XLA-compiled (the iterator cannot be in an XLA cluster), for several steps per call
        and eagerly. Each replica runs `train_step` on its batch of a distributed iterator
        (`strategy.run`) and the logs are the mean over the replicas, as with Keras' function.
        """
        if self.train_function is not None and not force:
            return self.train_function
        if self.jit_compile or self.run_eagerly or self.steps_per_execution != 1:
            super().make_train_function(force)
            return self.train_function
        strategy = self.distribute_strategy

        def mean_over_replicas(value):
            # `_track`'s multi-worker logs are rank 1, one value per replica.
            rank = strategy.experimental_local_results(value)[0].shape.rank
            return strategy.reduce("MEAN", value, axis=0 if rank else None)

        def step_on_data(data):
            logs = strategy.run(self.train_step, args=(data,))
            return {name: mean_over_replicas(value) for name, value in logs.items()}

        # No AutoGraph: the step has no Python control flow on tensors, and converting its
        # functions took an eighth to a quarter of the trace (benchmarks/README.md, "The
        # trace without AutoGraph").
        on_iterator = tf.function(
            lambda iterator: step_on_data(iterator.get_next()), autograph=False
        )
        on_data = tf.function(step_on_data, reduce_retracing=True, autograph=False)

        def function(iterator):
            # A tf.data (or distributed) iterator's end raises OutOfRangeError inside the
            # function and a Python iterator's StopIteration here: `fit` ends the epoch on
            # either, as with Keras' function.
            if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
                return on_iterator(iterator)
            return on_data(next(iterator))

        self.train_function = function
        return function

    def test_step(self, data):
        return self._track(self.compute_losses(data, training=False))

    def _track(self, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(losses[name])
        logs = {name: tracker.result() for name, tracker in self.loss_trackers.items()}
        if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
            # Keras (3.15.1, reduce_per_replica) averages multi-worker logs with
            # strategy.reduce(MEAN, axis=0), which fails on scalars: rank 1 it is.
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    # ------------------------------------------------------------------ serialization

    def get_config(self) -> dict[str, Any]:
        """The model's parts (each part's own config) and its precision: the model alone,
        nothing of the application's config (paths, schedules, data)."""
        return {
            "name": self.name,
            "precision": self.precision,
            "jit_compile": self.xla,
            "parts": {
                part: keras.saving.serialize_keras_object(getattr(self, part)) for part in PARTS
            },
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskRCNN:
        parts = {
            part: keras.saving.deserialize_keras_object(value)
            for part, value in config["parts"].items()
        }
        return cls(
            precision=config.get("precision", "float32"),
            jit_compile=config.get("jit_compile", False),
            name=config.get("name", "mask_rcnn"),
            **parts,
        )
