"""Mask R-CNN on a SpineNet backbone, as one Keras model.

    model = build_mask_rcnn(config)
    outputs = model(images)            # inference dict (docs/architecture.md)
    losses = model.compute_losses(batch, training=True)
    model.compile(optimizer=...); model.fit(dataset)   # train_step uses compute_losses

Inference (`call`): backbone -> RPN -> proposals (test_cfg.rpn) -> RoIAlign 7x7 ->
box head -> class-wise decode + combined NMS (test_cfg.rcnn) -> RoIAlign 14x14 on the
detections -> mask head -> each detection's class channel, sigmoid.

Training (`compute_losses`): RPN targets and losses on all anchors; proposals
(train_cfg.rpn_proposal) -> assign and sample RoIs (train_cfg.rcnn) -> box head
losses; the sampled positives (at most mask_roi.sample_num per image) -> mask head
loss against the gt masks cropped at each RoI.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from maskspine.config import Config, ConfigError, config_from_dict, config_to_dict
from maskspine.modeling import anchors as anchor_ops
from maskspine.modeling import losses as loss_ops
from maskspine.modeling import targets as target_ops
from maskspine.modeling.detection import detect_boxes
from maskspine.modeling.heads import BoxHead, MaskHead
from maskspine.modeling.roi_align import multilevel_roi_align
from maskspine.modeling.rpn import RPNHead, generate_proposals
from maskspine.modeling.spinenet import SCALING_MAP, build_spinenet
from maskspine.precision import dtype_policy, resolve_precision

LOSS_NAMES = (
    "loss",
    "rpn_cls_loss",
    "rpn_box_loss",
    "rcnn_cls_loss",
    "rcnn_box_loss",
    "mask_loss",
)


def build_mask_rcnn(config: Config) -> MaskRCNN:
    """Builds the detector described by `config` (its weights freshly initialised).

    Raises:
        ConfigError: when the config's parts do not fit together (channels, sizes).
    """
    return MaskRCNN(config)


def endpoint_channels(config: Config) -> int:
    """Channels of the backbone's output features for `config`."""
    if config.backbone.endpoints_num_filters is not None:
        return config.backbone.endpoints_num_filters
    return int(SCALING_MAP[config.backbone.arch]["endpoints_num_filters"])


def check_model_config(config: Config) -> None:
    """Checks that the model parts of `config` fit together; raises ConfigError naming keys."""
    if config.classes_from_data:
        raise ConfigError(
            "coco_classes is 'from_data': resolve the classes from the data set "
            "(the train command does) before building the model"
        )
    channels = endpoint_channels(config)
    for key, value in (
        ("rpn.in_channels", config.rpn.in_channels),
        ("bbox_head.in_channels", config.bbox_head.in_channels),
        ("mask_head.in_channels", config.mask_head.in_channels),
        ("roi.out_channels", config.roi.out_channels),
        ("mask_roi.out_channels", config.mask_roi.out_channels),
    ):
        if value != channels:
            raise ConfigError(
                f"{key} is {value} but SpineNet-{config.backbone.arch} gives {channels}-channel "
                f"features (backbone.endpoints_num_filters); set {key}: {channels}"
            )
    if config.rpn.num_classes != 1:
        raise ConfigError("rpn.num_classes must be 1 (one sigmoid objectness per anchor)")
    for key, extractor in (("roi", config.roi), ("mask_roi", config.mask_roi)):
        if extractor.roi_layer.type != "RoIAlign":
            raise ConfigError(
                f"{key}.roi_layer.type must be 'RoIAlign', got {extractor.roi_layer.type!r}"
            )
        levels = [
            config.backbone.min_level + i for i in range(len(config.rpn.anchor_generator.strides))
        ]
        available = {2**level for level in levels}
        bad = [s for s in extractor.featmap_strides if s not in available]
        if bad:
            raise ConfigError(
                f"{key}.featmap_strides has {bad}, which the backbone does not give "
                f"(strides {sorted(available)})"
            )
    if config.bbox_head.roi_feat_size != config.roi.roi_layer.out_size:
        raise ConfigError(
            f"bbox_head.roi_feat_size ({config.bbox_head.roi_feat_size}) must equal "
            f"roi.roi_layer.out_size ({config.roi.roi_layer.out_size})"
        )
    if 2 * config.mask_roi.roi_layer.out_size != config.train_cfg.rcnn.mask_size:
        raise ConfigError(
            f"train_cfg.rcnn.mask_size ({config.train_cfg.rcnn.mask_size}) must be twice "
            f"mask_roi.roi_layer.out_size ({config.mask_roi.roi_layer.out_size}): the mask head upsamples 2x"
        )
    strides = config.rpn.anchor_generator.strides
    expected = [2 ** (config.backbone.min_level + i) for i in range(len(strides))]
    if list(strides) != expected:
        raise ConfigError(
            f"rpn.anchor_generator.strides {list(strides)} must be {expected} "
            f"(the backbone levels {config.backbone.min_level}..{config.backbone.max_level})"
        )


@keras.saving.register_keras_serializable(package="maskspine")
class MaskRCNN(keras.Model):
    """SpineNet Mask R-CNN.

    Call: `model(images)` or `model({"images": ..., "image_info": ...})` with images
    [B, img_height, img_width, 3] float32 normalised -> dict of
    `detection_boxes` [B, D, 4] yxyx input pixels, `detection_scores` [B, D],
    `detection_classes` [B, D] int32 (1-based, 0 = padding), `num_detections` [B] int32,
    `detection_masks` [B, D, 28, 28] float32 probabilities relative to each box
    (D = test_cfg.rcnn.max_per_img). With `image_info`, boxes are clipped to the scaled
    image (row 1); otherwise, or with `clip_boxes_to: input`, to the config's input size.
    """

    def __init__(self, config: Config | dict, **kwargs):
        if isinstance(config, dict):
            config = config_from_dict(config, source="<saved model config>")
        check_model_config(config)
        # The model itself stays float32: its inputs (image_info) are never cast.
        super().__init__(name=kwargs.pop("name", "mask_rcnn"), **kwargs)
        self.config = config
        self.image_size = (config.img_height, config.img_width)
        self.precision = resolve_precision(config.precision)
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in LOSS_NAMES}
        with dtype_policy(self.precision):
            self._create_parts(config)
        self.built = True

    def _create_parts(self, config: Config) -> None:
        """Backbone and heads, created (and built) under the model's dtype policy."""
        norm = config.backbone.norm_cfg
        self.backbone = build_spinenet(
            config.backbone.arch,
            (config.img_height, config.img_width, 3),
            min_level=config.backbone.min_level,
            max_level=config.backbone.max_level,
            activation=config.backbone.activation,
            norm_momentum=1.0 - norm.momentum,
            norm_epsilon=norm.eps,
            stochastic_depth_rate=config.backbone.stochastic_depth_rate,
            filter_size_scale=config.backbone.filter_size_scale,
            endpoints_num_filters=config.backbone.endpoints_num_filters,
            resample_alpha=config.backbone.resample_alpha,
            block_repeats=config.backbone.block_repeats,
            conv_padding=config.backbone.conv_padding,
            downsample_pooling=config.backbone.downsample_pooling,
            name="backbone",
        )
        generator = config.rpn.anchor_generator
        self.num_anchors = len(generator.scales) * len(generator.ratios)
        rpn = config.rpn
        self.rpn_head = RPNHead(
            self.num_anchors,
            rpn.feat_channels,
            num_convs=rpn.num_convs,
            norm_per_level=rpn.norm_per_level,
            levels=list(range(config.backbone.min_level, config.backbone.max_level + 1)),
            activation=rpn.activation,
            norm_momentum=1.0 - rpn.norm_cfg.momentum,
            norm_epsilon=rpn.norm_cfg.eps,
            name="rpn_head",
        )
        box = config.bbox_head
        self.box_head = BoxHead(
            config.num_classes,
            num_shared_convs=box.num_shared_convs,
            conv_out_channels=box.conv_out_channels,
            num_shared_fcs=box.num_shared_fcs,
            fc_out_channels=box.fc_out_channels,
            reg_class_agnostic=box.reg_class_agnostic,
            norm_momentum=1.0 - box.norm_cfg.momentum,
            norm_epsilon=box.norm_cfg.eps,
            conv_bias=box.conv_bias,
            fc_norm=box.fc_norm,
            activation=box.activation,
            name="box_head",
        )
        mask = config.mask_head
        self.mask_head = MaskHead(
            config.num_classes,
            num_convs=mask.num_convs,
            conv_out_channels=mask.conv_out_channels,
            norm_momentum=1.0 - mask.norm_cfg.momentum,
            norm_epsilon=mask.norm_cfg.eps,
            conv_bias=mask.conv_bias,
            deconv_norm=mask.deconv_norm,
            activation=mask.activation,
            name="mask_head",
        )
        for part, norm in (
            (self.backbone, config.backbone.norm_cfg),
            (self.rpn_head, rpn.norm_cfg),
            (self.box_head, box.norm_cfg),
            (self.mask_head, mask.norm_cfg),
        ):
            _synchronize_batch_norm(part, norm.type == "SyncBN")
        channels = endpoint_channels(config)
        self.rpn_head.build((None, None, None, channels))
        roi_size, mask_roi_size = config.roi.roi_layer.out_size, config.mask_roi.roi_layer.out_size
        self.box_head.build((None, None, roi_size, roi_size, channels))
        self.mask_head.build((None, None, mask_roi_size, mask_roi_size, channels))

    # ------------------------------------------------------------------ pieces

    def anchors(self) -> dict[int, tf.Tensor]:
        """{level: [N_l, 4]} anchors for the config's input size (constants in the graph)."""
        generator = self.config.rpn.anchor_generator
        return anchor_ops.generate_anchors(
            self.image_size,
            generator.strides,
            generator.scales,
            generator.ratios,
            generator.ratio_convention,
        )

    def _image_shape(self, images: tf.Tensor, image_info: tf.Tensor | None) -> tf.Tensor:
        """[B, 2] (height, width) boxes are clipped to: the scaled image (image_info row 1)
        or, with `clip_boxes_to: input` or without image_info, the config's input size."""
        if image_info is not None and self.config.clip_boxes_to == "image":
            return tf.cast(image_info[:, 1, :], tf.float32)
        batch = tf.shape(images)[0]
        return tf.tile(tf.constant([self.image_size], tf.float32), [batch, 1])

    def propose(self, features, image_shape, *, training: bool):
        """RPN outputs and proposals: (objectness {l: [B, N_l]}, deltas {l: [B, N_l, 4]},
        proposals [B, P, 4], valid [B, P])."""
        objectness, deltas = self.rpn_head(features, training=training)
        settings = self.config.train_cfg.rpn_proposal if training else self.config.test_cfg.rpn
        proposals, _, valid = generate_proposals(
            objectness,
            deltas,
            self.anchors(),
            image_shape,
            nms_pre=settings.nms_pre,
            max_per_img=settings.max_per_img,
            iou_threshold=settings.iou_threshold,
            min_bbox_size=settings.min_bbox_size,
            size_filter=settings.size_filter,
            nms_rule=settings.nms_rule,
            nms_implementation=settings.nms_implementation,
            **_coder_kwargs(self.config.rpn.bbox_coder),
        )
        return objectness, deltas, proposals, valid

    def box_features(self, features, boxes):
        """[B, N, 4] boxes -> [B, N, S, S, C] RoIAlign features for the box head (`roi`)."""
        return _roi_features(features, boxes, self.config.roi)

    def mask_features(self, features, boxes):
        """[B, K, 4] boxes -> [B, K, S, S, C] RoIAlign features for the mask head (`mask_roi`)."""
        return _roi_features(features, boxes, self.config.mask_roi)

    def detect(self, features, proposals, valid, image_shape) -> dict[str, tf.Tensor]:
        """Box head on the proposals, class-wise decode and NMS (test_cfg.rcnn): the
        detection dict without masks."""
        class_logits, box_deltas = self.box_head(
            self.box_features(features, proposals), training=False
        )
        return self.generate_detections(class_logits, box_deltas, proposals, valid, image_shape)

    def generate_detections(
        self, class_logits, box_deltas, proposals, valid, image_shape
    ) -> dict[str, tf.Tensor]:
        """The box head's outputs -> class-wise decode + NMS (test_cfg.rcnn): the detection
        dict without masks."""
        rcnn = self.config.test_cfg.rcnn
        return detect_boxes(
            class_logits,
            box_deltas,
            proposals,
            valid,
            image_shape,
            score_thr=rcnn.score_thr,
            iou_threshold=rcnn.iou_threshold,
            max_per_img=rcnn.max_per_img,
            nms_rule=rcnn.nms_rule,
            nms_implementation=rcnn.nms_implementation,
            **_coder_kwargs(self.config.bbox_head.bbox_coder),
        )

    def detection_masks(self, features, boxes, classes) -> tf.Tensor:
        """[B, D, 28, 28] mask probabilities of each detection's own class."""
        mask_logits = self.mask_head(self.mask_features(features, boxes), classes, training=False)
        return tf.sigmoid(tf.cast(mask_logits, tf.float32))

    # ------------------------------------------------------------------ inference

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            images, image_info = inputs["images"], inputs.get("image_info")
        else:
            images, image_info = inputs, None
        image_shape = self._image_shape(images, image_info)
        features = self.backbone(images, training=False)
        _, _, proposals, valid = self.propose(features, image_shape, training=False)
        detections = self.detect(features, proposals, valid, image_shape)
        detections["detection_masks"] = self.detection_masks(
            features, detections["detection_boxes"], detections["detection_classes"]
        )
        return detections

    # ------------------------------------------------------------------ training

    def compute_losses(
        self,
        batch: dict[str, tf.Tensor],
        training: bool = True,
        sampling_seed: tf.Tensor | None = None,
    ) -> dict[str, tf.Tensor]:
        """All losses for a training batch (docs/architecture.md's batch dict).

        Args:
            sampling_seed: None (the RPN and R-CNN samplers draw from TensorFlow's stateful
                generator) or a [2] int seed, e.g. `targets.sampling_seed(config.seed,
                step, replica)`: stateless draws, the same for the same seed.

        Returns:
            float32 scalars: `loss` (the weighted sum), `rpn_cls_loss`, `rpn_box_loss`,
            `rcnn_cls_loss`, `rcnn_box_loss`, `mask_loss` (each already weighted).
        """
        config = self.config
        images = batch["images"]
        image_shape = self._image_shape(images, batch["image_info"])
        gt_boxes = tf.cast(batch["gt_boxes"], tf.float32)
        gt_classes = tf.cast(batch["gt_classes"], tf.int32)
        gt_is_crowd = tf.cast(batch["gt_is_crowd"], tf.bool)
        features = self.backbone(images, training=training)
        # xla-kernels: one stateless stream per sampler when a step's seed is given.
        seeds = target_ops.sampler_seeds(sampling_seed)

        # RPN
        objectness, deltas, proposals, valid = self.propose(features, image_shape, training=True)
        levels = sorted(objectness)
        all_anchors = tf.concat([self.anchors()[level] for level in levels], axis=0)
        rpn_cfg = config.train_cfg.rpn
        rpn_targets = target_ops.rpn_targets(
            all_anchors,
            gt_boxes,
            gt_classes,
            gt_is_crowd,
            image_shape,
            **_assigner_kwargs(rpn_cfg.assigner),
            **_sampler_kwargs(rpn_cfg.sampler),
            means=config.rpn.bbox_coder.target_means,
            stds=config.rpn.bbox_coder.target_stds,
            legacy_plus_one=config.rpn.bbox_coder.legacy_plus_one,
            seed=seeds["rpn"],
        )
        losses = loss_ops.rpn_losses(
            tf.concat([objectness[level] for level in levels], axis=1),
            tf.concat([deltas[level] for level in levels], axis=1),
            rpn_targets,
            beta=config.rpn.loss_bbox.beta,
            cls_weight=config.rpn.loss_cls.loss_weight,
            box_weight=config.rpn.loss_bbox.loss_weight,
        )

        # R-CNN box head on sampled RoIs
        rcnn_cfg = config.train_cfg.rcnn
        sampler = _sampler_kwargs(rcnn_cfg.sampler)
        sampler["num"] = min(sampler["num"], config.roi.sample_num)
        coder = config.bbox_head.bbox_coder
        rcnn = target_ops.rcnn_targets(
            proposals,
            valid,
            gt_boxes,
            gt_classes,
            gt_is_crowd,
            **_assigner_kwargs(rcnn_cfg.assigner),
            **sampler,
            means=coder.target_means,
            stds=coder.target_stds,
            legacy_plus_one=coder.legacy_plus_one,
            seed=seeds["rcnn"],
        )
        class_logits, box_deltas = self.box_head(
            self.box_features(features, rcnn["rois"]), training=training
        )
        if config.bbox_head.reg_class_agnostic:
            box_deltas = box_deltas[:, :, 0]
        losses.update(
            loss_ops.rcnn_losses(
                class_logits,
                box_deltas,
                rcnn["class_targets"],
                rcnn["box_deltas"],
                rcnn["box_weight"],
                rcnn["roi_valid"],
                beta=config.bbox_head.loss_bbox.beta,
                cls_weight=config.bbox_head.loss_cls.loss_weight,
                box_weight=config.bbox_head.loss_bbox.loss_weight,
            )
        )

        # Mask head on (at most mask_roi.sample_num) positive RoIs per image
        num_mask_rois = min(config.mask_roi.sample_num, sampler["num"])
        positive = rcnn["positive"]
        # top_k keeps the lower index first among ties: positives in sampled order.
        picked = tf.math.top_k(tf.cast(positive, tf.float32), k=num_mask_rois).indices
        mask_rois = tf.gather(rcnn["rois"], picked, batch_dims=1)
        mask_positive = tf.gather(positive, picked, batch_dims=1)
        mask_classes = tf.gather(rcnn["class_targets"], picked, batch_dims=1)
        mask_matched = tf.gather(rcnn["matched_gt"], picked, batch_dims=1)
        matched_boxes = tf.gather(gt_boxes, mask_matched, batch_dims=1)
        mask_targets = target_ops.mask_targets(
            mask_rois,
            matched_boxes,
            batch["gt_masks"],
            mask_matched,
            mask_size=rcnn_cfg.mask_size,
            method=rcnn_cfg.mask_target_method,
        )
        # Each positive RoI's target class (padding RoIs take channel 0; the loss skips them).
        mask_channel = tf.where(mask_positive, mask_classes, 0)
        mask_logits = self.mask_head(
            self.mask_features(features, mask_rois), mask_channel, training=training
        )
        losses.update(
            loss_ops.mask_loss(
                mask_logits,
                mask_targets,
                mask_positive,
                weight=config.mask_head.loss_mask.loss_weight,
            )
        )
        losses["loss"] = tf.add_n([tf.cast(v, tf.float32) for v in losses.values()])
        return losses

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, then the optimizer's variables are created at once (under
        the current strategy scope), so `fit` has nothing left to build."""
        # The default kernels (crop_and_resize, TensorFlow's NMS) have no XLA kernel; with
        # every part's XLA option (docs/architecture.md, "Choices") jit_compile=True works.
        kwargs.setdefault("jit_compile", False)
        super().compile(*args, **kwargs)
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' own (3.15.1, backend/tensorflow/trainer.py), run by fit and evaluate for a
        # model created under a strategy, pulls one batch and averages it over the replicas
        # (strategy.reduce MEAN) before it looks at what is built, and no public setting
        # skips it. The average fails on bool tensors (gt_is_crowd) and, under
        # MultiWorkerMirroredStrategy, on any dict batch (its reduce takes one tensor, not
        # a nest). Model and optimizer are built already (__init__, compile): nothing to do.
        # A private Keras method: tests/training/test_replicas.py checks that fit still
        # calls it, and pyproject.toml caps keras below the next minor release.
        if self.built and (self.optimizer is None or self.optimizer.built):
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            losses = self.compute_losses(data, training=True)
            # Gradients are summed over replicas: each replica contributes its share.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            loss = losses["loss"] / tf.cast(replicas, tf.float32)
            scaled = self.optimizer.scale_loss(loss)
        weights = self.trainable_weights
        gradients = tape.gradient(scaled, weights)
        self.optimizer.apply_gradients(zip(gradients, weights))
        return self._track(losses)

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
        return {"config": config_to_dict(self.config), "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskRCNN:
        return cls(config["config"], name=config.get("name", "mask_rcnn"))


def _synchronize_batch_norm(part: keras.layers.Layer, synchronized: bool) -> None:
    """norm_cfg.type SyncBN: BatchNorm statistics over all replicas (Keras reads the flag
    at call time and saves it with the layer)."""
    for layer in part._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized


def _roi_features(features, boxes, extractor) -> tf.Tensor:
    """Multilevel RoIAlign with an extractor config (`roi` or `mask_roi`)."""
    return multilevel_roi_align(
        features,
        boxes,
        output_size=extractor.roi_layer.out_size,
        featmap_strides=extractor.featmap_strides,
        finest_scale=extractor.finest_scale,
        sampling_ratio=extractor.roi_layer.sample_num,
        aligned=extractor.roi_layer.aligned,
        level_assignment=extractor.level_assignment,
        method=extractor.roi_layer.method,
    )


def _coder_kwargs(coder) -> dict[str, Any]:
    """`decode_boxes` / `detect_boxes` / `generate_proposals` arguments of a box coder config."""
    return dict(
        means=coder.target_means,
        stds=coder.target_stds,
        legacy_plus_one=coder.legacy_plus_one,
        dhdw_clip=coder.dhdw_clip,
    )


def _assigner_kwargs(assigner) -> dict[str, Any]:
    return dict(
        pos_iou_thr=assigner.pos_iou_thr,
        neg_iou_thr=assigner.neg_iou_thr,
        min_pos_iou=assigner.min_pos_iou,
        match_low_quality=assigner.match_low_quality,
    )


def _sampler_kwargs(sampler) -> dict[str, Any]:
    return dict(
        num=sampler.num,
        pos_fraction=sampler.pos_fraction,
        neg_pos_ub=sampler.neg_pos_ub,
        add_gt_as_proposals=sampler.add_gt_as_proposals,
    )
