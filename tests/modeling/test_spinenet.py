"""SpineNet backbone: shapes, parameter counts against TF Model Garden, serialization.

Parameter counts were obtained from TF Model Garden (tf-models-nightly
2.21.0.dev20260217, `official.vision.modeling.backbones.spinenet.SpineNet` with
the model id's SCALING_MAP entry, min_level=3, max_level=7) in a separate venv:
    bash ../shared/tools/modelgarden-venv.sh
    /tmp/modelgarden-venv/bin/python ../shared/tools/modelgarden_spinenet_params.py
(49S/49/96/143/190), and for 143L and the small variant the same `SpineNet(...)`
call with SCALING_MAP["143L"] at 1280, and with endpoints_num_filters=32,
filter_size_scale=0.25, resample_alpha=0.5, block_repeats=1 at 128x128.
`count_params()` there counts BatchNorm moving statistics too, as Keras does here.
"""

from __future__ import annotations

import numpy as np
import pytest

from maskspine.modeling.spinenet import SCALING_MAP, build_spinenet, spinenet_plan

MODEL_GARDEN_PARAMS = {
    "49S": 9_146_351,
    "49": 21_920_192,
    "96": 36_385_728,
    "143": 60_413_888,
    "143L": 101_011_093,
    "190": 126_849_216,
}
MODEL_GARDEN_TINY_PARAMS = 1_374_272  # 49 topology, scale 0.25, 32 endpoint filters
INPUT_SIZE = {"49S": 640, "49": 640, "96": 1024, "143": 1280, "143L": 1280, "190": 1280}
FAST_IDS = ["49S", "49"]
SLOW_IDS = ["96", "143", "143L", "190"]


def tiny_spinenet(input_shape=(None, None, 3)):
    return build_spinenet(
        "49",
        input_shape,
        filter_size_scale=0.25,
        endpoints_num_filters=32,
        resample_alpha=0.5,
        block_repeats=1,
    )


def check_model_id(model_id: str):
    size = INPUT_SIZE[model_id]
    model = build_spinenet(model_id, (size, size, 3))
    assert model.count_params() == MODEL_GARDEN_PARAMS[model_id]
    channels = SCALING_MAP[model_id]["endpoints_num_filters"]
    assert sorted(model.output) == ["P3", "P4", "P5", "P6", "P7"]
    for level in range(3, 8):
        assert tuple(model.output[f"P{level}"].shape) == (
            None,
            size >> level,
            size >> level,
            channels,
        )


@pytest.mark.parametrize("model_id", FAST_IDS)
def test_model_id_shapes_and_params_match_model_garden(model_id):
    check_model_id(model_id)


@pytest.mark.slow
@pytest.mark.parametrize("model_id", SLOW_IDS)
def test_large_model_id_shapes_and_params_match_model_garden(model_id):
    check_model_id(model_id)


def test_small_variant_params_match_model_garden():
    assert tiny_spinenet((128, 128, 3)).count_params() == MODEL_GARDEN_TINY_PARAMS


@pytest.mark.parametrize("size", [(128, 128), (256, 384)])
def test_any_divisible_size_runs_with_dynamic_input(size):
    model = tiny_spinenet()
    height, width = size
    outputs = model(np.random.rand(2, height, width, 3).astype("float32"))
    for level in range(3, 8):
        assert tuple(outputs[f"P{level}"].shape) == (2, height >> level, width >> level, 32)
        assert np.isfinite(outputs[f"P{level}"].numpy()).all()


def test_min_and_max_level_select_outputs():
    model = build_spinenet(
        "49",
        (128, 128, 3),
        min_level=4,
        max_level=6,
        filter_size_scale=0.25,
        endpoints_num_filters=16,
    )
    assert sorted(model.output) == ["P4", "P5", "P6"]


def test_indivisible_static_size_is_a_clear_error():
    with pytest.raises(ValueError, match=r"100x128 is not divisible by 128"):
        build_spinenet("49", (100, 128, 3))


def test_indivisible_dynamic_size_is_a_clear_error():
    model = tiny_spinenet()
    with pytest.raises(ValueError, match=r"192x200 is not divisible by 128"):
        model(np.zeros((1, 192, 200, 3), "float32"))


def test_unknown_model_id():
    with pytest.raises(ValueError, match="unknown SpineNet model id '50'"):
        build_spinenet("50")


def test_save_and_load_keras_file_gives_identical_outputs(tmp_path):
    import keras

    model = build_spinenet(
        "49",
        (128, 128, 3),
        filter_size_scale=0.25,
        endpoints_num_filters=32,
        stochastic_depth_rate=0.2,
    )
    images = np.random.RandomState(0).rand(1, 128, 128, 3).astype("float32")
    expected = model(images)
    path = tmp_path / "spinenet.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    got = loaded(images)
    assert loaded.count_params() == model.count_params()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key].numpy(), value.numpy())


def test_layers_round_trip_through_get_config():
    from maskspine.modeling.layers import InputSizeCheck, StochasticDepth

    for layer in (StochasticDepth(0.3, name="sd"), InputSizeCheck(64, name="check")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_stochastic_depth_drops_whole_samples_and_keeps_the_mean():
    from maskspine.modeling.layers import StochasticDepth

    layer = StochasticDepth(0.5)
    x = np.ones((4000, 2, 2, 1), "float32")
    y = layer(x, training=True).numpy()
    per_sample = y.reshape(4000, -1)
    # each sample is either dropped entirely or scaled by 1 / keep
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample.min(axis=1) == per_sample.max(axis=1)).all()
    assert abs(per_sample.mean() - 1.0) < 0.1
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x)


# --------------------------------------------------------------------------- build plan


def test_plan_starts_in_the_originals_build_order():
    """Read off SPINENET_BLOCK_SPECS by hand: the stem, the stem blocks (the first projects
    64 channels to 256), then block spec 0 (level 2 from two level-2 stem blocks: reduce and
    expand only) and block spec 1 (level 4 from level 2: a stride-2 conv in between)."""
    plan = spinenet_plan("49")
    expected = [
        ("stem", "stem", "conv", False),
        ("stem_block", "stem_block1", "bottleneck", True),
        ("stem_block", "stem_block2", "bottleneck", False),
        ("resample_reduce", "block1_in0_reduce", "conv", False),
        ("resample_expand", "block1_in0_expand", "conv", False),
        ("resample_reduce", "block1_in1_reduce", "conv", False),
        ("resample_expand", "block1_in1_expand", "conv", False),
        ("block", "block1", "bottleneck", False),
        ("resample_reduce", "block2_in0_reduce", "conv", False),
        ("resample_down", "block2_in0_down", "conv", False),
        ("resample_expand", "block2_in0_expand", "conv", False),
    ]
    got = [(layer.role, layer.name, layer.kind, layer.projection) for layer in plan.layers]
    assert got[: len(expected)] == expected
    assert [layer.name for layer in plan.layers[-5:]] == [
        f"endpoint_P{level}" for level in range(3, 8)
    ]
    # 1 stem conv + 2 stem blocks + 16 blocks + 5 endpoints + the resampling convs: two
    # connections per block, reduce + expand each, plus a stride-2 conv per connection
    # going to a coarser level (16 of the 32 in the block specs).
    assert len(plan.layers) == 1 + 2 + 16 + 5 + 32 * 2 + 16


def test_plan_repeats_name_each_block_of_a_group():
    plan = spinenet_plan("96")  # block_repeats 2
    names = [layer.name for layer in plan.layers if layer.block == 2]
    assert names == ["block1_in0_reduce", "block1_in0_expand", "block1_in1_reduce",
                     "block1_in1_expand", "block1_1", "block1_2"]  # fmt: skip
    assert [layer.projection for layer in plan.layers if layer.role == "stem_block"] == [
        True, False, False, False,
    ]  # fmt: skip


@pytest.mark.parametrize(("min_level", "max_level"), [(3, 7), (2, 6), (4, 6), (2, 7)])
def test_plan_is_what_the_builder_creates_in_creation_order(monkeypatch, min_level, max_level):
    """Every Conv2D the builder creates, in order, is the plan's (unused blocks included:
    the functional model prunes them); the model holds exactly the used ones."""
    import keras

    created = []
    init = keras.layers.Conv2D.__init__

    def recording_init(self, *args, **kwargs):
        created.append(kwargs["name"])
        init(self, *args, **kwargs)

    monkeypatch.setattr(keras.layers.Conv2D, "__init__", recording_init)
    overrides = dict(filter_size_scale=0.125, endpoints_num_filters=8, block_repeats=2)
    model = build_spinenet("49", (128, 128, 3), min_level, max_level, **overrides)
    plan = spinenet_plan("49", min_level, max_level, **overrides)
    planned = [conv for layer in plan.layers for conv, _ in layer.weight_layer_names()]
    assert created == planned
    used = {name for layer in plan.layers if layer.used for pair in layer.weight_layer_names()
            for name in pair}  # fmt: skip
    in_model = {layer.name for layer in model.layers if layer.weights}
    assert in_model == used
    unused = {layer.name.split("_")[0] for layer in plan.layers if not layer.used}
    assert ("block16" in unused) == (min_level > 2)  # the level-2 output block
    assert ("block12" in unused) == (min_level > 3)  # level 3, read only by block 16


# --------------------------------------------------------------------------- input size


def test_the_input_size_rule_is_128_whatever_max_level(monkeypatch):
    """Level-7 blocks are built even for max_level 6 and merged into level 5: at 192 (a
    multiple of 2**6) they are ceil(192 / 128) = 2 cells, upsampled 4x to 8, against
    192 / 32 = 6 at level 5. So 128 is the rule, and the config agrees."""
    from maskspine.config import schema
    from maskspine.modeling import spinenet

    # one rule: the config checks the divisor the backbone is built with
    assert spinenet.INPUT_SIZE_DIVISOR == schema.INPUT_SIZE_DIVISOR == 128
    small = dict(filter_size_scale=0.125, endpoints_num_filters=8)
    with pytest.raises(ValueError, match=r"192x192 is not divisible by 128"):
        build_spinenet("49", (192, 192, 3), max_level=6, **small)
    model = build_spinenet("49", (256, 384, 3), max_level=6, **small)
    assert {k: tuple(v.shape[1:3]) for k, v in model.output.items()} == {
        f"P{level}": (256 >> level, 384 >> level) for level in range(3, 7)
    }
    # Without the check, the merge of the upsampled level-7 map fails (why 2**6 is not enough).
    monkeypatch.setattr(spinenet, "INPUT_SIZE_DIVISOR", 64)
    with pytest.raises(ValueError, match=r"incompatible shapes.*\(6, 6, \d+\) and \(8, 8, \d+\)"):
        build_spinenet("49", (192, 192, 3), max_level=6, **small)
