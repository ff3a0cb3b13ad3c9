"""`maskspine.pretrained.import_weights` on synthetic checkpoints with the originals' real
variable names (tables/*.json.gz, from the original code): names, values traced to their
weights, sources (prefix, directory, .tar.gz), every error case, and the run directory."""

from __future__ import annotations

import os
import tarfile

import numpy as np
import pytest
from checkpoint_fixtures import (
    TINY_PRETRAINED_OVERRIDES,
    load_table,
    pattern,
    write_modelgarden_checkpoint,
    write_tpu_checkpoint,
)

from maskspine.config import load_config
from maskspine.pretrained import FORMATS, WeightsImportError, import_weights, names
from maskspine.pretrained import pretrained_config_path as config_path
from maskspine.pretrained.importer import _why_ignored

CASES = [(fmt, model) for fmt, models in FORMATS.items() for model in models]


def variable_map(format: str, config, keys) -> dict[str, str]:
    if format == "tpu":
        return names.tpu_variable_map(config)
    prefixes = {
        part: next(p for p in candidates if any(k.startswith(p) for k in keys))
        for part, candidates in names.MODELGARDEN_PREFIXES.items()
    }
    return names.modelgarden_variable_map(config, prefixes)


def write(format: str, prefix, variables) -> str:
    writer = write_tpu_checkpoint if format == "tpu" else write_modelgarden_checkpoint
    return writer(str(prefix), variables)


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("format", "model"), CASES)
def test_every_variable_of_the_real_checkpoint_has_one_weight(format, model):
    table = load_table(format, model)
    keys = {name for name, _, _ in table["variables"]}
    mapping = variable_map(format, load_config(config_path(format, model)), keys)
    assert set(mapping) <= keys
    assert {key for key in keys - set(mapping) if _why_ignored(key, format) is None} == set()
    assert len(set(mapping.values())) == len(mapping)  # one variable per weight
    sizes = {name: int(np.prod(shape)) for name, shape, _ in table["variables"]}
    assert sum(sizes[key] for key in mapping) == table["num_parameters"]


#: Read off the originals' builders (tools/README.md), independently of maskspine's walk.
HAND_TRACED = {
    "tpu": {
        "spinenet/conv2d/kernel": "stem_conv/kernel",
        "spinenet/batch_normalization/gamma": "stem_bn/gamma",
        "spinenet/conv2d_1/kernel": "stem_block1_proj_conv/kernel",  # projection first
        "spinenet/conv2d_4/kernel": "stem_block1_3_conv/kernel",
        "spinenet/conv2d_8/kernel": "endpoint_P3_conv/kernel",  # after 8 stem convs
        "spinenet/sub_policy0/resample_with_alpha_resample_0_1/conv2d_1/kernel": (
            "block1_in1_expand_conv/kernel"
        ),
        "spinenet/sub_policy1/resample_with_alpha_resample_1_0/conv2d_1/kernel": (
            "block2_in0_down_conv/kernel"  # level 2 -> 4: reduce, stride-2 conv, expand
        ),
        "spinenet/sub_policy1/scale_permuted_block_3/conv2d_1/kernel": "block2_2_conv/kernel",
        "rpn_head/rpn/bias": "rpn_head/rpn_conv/bias",
        "rpn_head/rpn-l6-bn/moving_mean": "rpn_head/rpn_bn_p6/moving_mean",
        "fast_rcnn_head/batch_normalization_4/beta": "box_head/box_head_fc1_bn/beta",
        "fast_rcnn_head/fc6/kernel": "box_head/box_head_fc1/kernel",
        "mask_head/batch_normalization_4/gamma": "mask_head/mask_head_deconv_bn/gamma",
        "mask_head/conv5-mask/kernel": "mask_head/mask_head_deconv/kernel",
        "mask_head/mask_fcn_logits/bias": "mask_head/mask_head_logits/bias",
    },
    "modelgarden": {
        "model/backbone/layer_with_weights-0/kernel": "stem_conv/kernel",
        "model/backbone/layer_with_weights-2/_shortcut/kernel": "stem_block1_proj_conv/kernel",
        "model/backbone/layer_with_weights-3/_conv3/kernel": "stem_block2_3_conv/kernel",
        "model/rpn_head/_norms/2/0/gamma": "rpn_head/rpn_bn_p5/gamma",
        "model/_config_dict/detection_head/_fc_norms/0/moving_variance": (
            "box_head/box_head_fc1_bn/moving_variance"
        ),
        "model/mask_head/_deconv_bn/beta": "mask_head/mask_head_deconv_bn/beta",
        "model/mask_head/_mask_regressor/kernel": "mask_head/mask_head_logits/kernel",
    },
}


@pytest.mark.parametrize("format", ["tpu", "modelgarden"])
def test_hand_traced_names(format):
    keys = {name for name, _, _ in load_table(format, "49")["variables"]}
    mapping = variable_map(format, load_config(config_path(format, "49")), keys)
    suffix = "" if format == "tpu" else "/.ATTRIBUTES/VARIABLE_VALUE"
    for source, target in HAND_TRACED[format].items():
        assert mapping[source + suffix] == target


@pytest.mark.parametrize("key", [
    "global_step", "spinenet/conv2d/kernel/Momentum", "fast_rcnn_head/fc6/kernel/ExponentialMovingAverage",
])  # fmt: skip
def test_tpu_training_leftovers_are_ignored(key):
    assert _why_ignored(key, "tpu") is not None
    assert _why_ignored("spinenet/conv2d/kernel", "tpu") is None


def test_modelgarden_training_leftovers_are_ignored():
    slot = "model/rpn_head/_classifier/kernel/.OPTIMIZER_SLOT/optimizer/momentum/.ATTRIBUTES/VARIABLE_VALUE"
    average = slot.replace("/momentum/", "/average/")
    assert _why_ignored(slot, "modelgarden") == "optimizer slots"
    assert _why_ignored(average, "modelgarden") == "moving-average (EMA) copies"
    assert _why_ignored("optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE", "modelgarden")
    assert _why_ignored("global_step/.ATTRIBUTES/VARIABLE_VALUE", "modelgarden")
    assert _why_ignored("model/backbone/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE",
                        "modelgarden") is None  # fmt: skip


# --------------------------------------------------------------------------- values


def _assert_values_landed(run, variables, format):
    from maskspine.checkpoints import load_model

    model, config, weights_file = load_model(run)
    assert weights_file == run / "model.weights.h5"
    mapping = variable_map(format, config, set(variables))
    weights = {w.path: w.numpy() for w in model.weights}
    assert set(mapping.values()) == set(weights)
    for source, target in mapping.items():
        np.testing.assert_array_equal(weights[target], variables[source], err_msg=source)


def test_real_spinenet49_tpu_checkpoint_every_value_lands_in_its_weight(tmp_path):
    """The published format and shapes (SpineNet-49 at 128 px: same weights as at 640)."""
    table = load_table("tpu", "49")
    variables = {name: pattern(i, shape) for i, (name, shape, _) in enumerate(table["variables"])
                 if name != "global_step"}  # fmt: skip
    extras = {
        "global_step": np.array(162050, np.int64),
        "spinenet/conv2d/kernel/Momentum": np.zeros((7, 7, 3, 64), np.float32),
        "spinenet/conv2d/kernel/ExponentialMovingAverage": np.ones((7, 7, 3, 64), np.float32),
    }
    write("tpu", tmp_path / "zoo" / "model.ckpt-162050", {**variables, **extras})
    report = import_weights(tmp_path / "zoo", format="tpu", model="49", output=tmp_path / "run",
                            overrides=["img_height=128", "img_width=128"])  # fmt: skip
    assert report.ignored == {
        "moving-average (EMA) copies": ["spinenet/conv2d/kernel/ExponentialMovingAverage"],
        "step counter": ["global_step"],
        "optimizer slots": ["spinenet/conv2d/kernel/Momentum"],
    }
    summary = report.summary()
    assert "total             742      742   40,851,441" in summary
    assert "1 step counter" in summary and "1 optimizer slots" in summary
    assert sorted(os.listdir(tmp_path / "run")) == [
        "config.yaml",
        "import.json",
        "model.weights.h5",
    ]
    _assert_values_landed(tmp_path / "run", variables, "tpu")


def _tiny_variables(format: str, model: str) -> tuple[dict, list[str]]:
    """Real names, shapes of the tiny model (TINY_PRETRAINED_OVERRIDES), pattern values."""
    from maskspine.modeling.factory import build_mask_rcnn

    table = load_table(format, model)
    keys = [name for name, _, _ in table["variables"]]
    config = load_config(config_path(format, model), TINY_PRETRAINED_OVERRIDES)
    shapes = {w.path: tuple(w.shape) for w in build_mask_rcnn(config).weights}
    mapping = variable_map(format, config, set(keys))
    variables = {key: pattern(i, shapes[mapping[key]]) for i, key in enumerate(keys)
                 if key in mapping}  # fmt: skip
    return variables, TINY_PRETRAINED_OVERRIDES


@pytest.mark.parametrize(
    ("format", "model"),
    [
        ("modelgarden", "49"),
        pytest.param("modelgarden", "96", marks=pytest.mark.slow),
        pytest.param("tpu", "190", marks=pytest.mark.slow),
    ],
)
def test_tiny_models_every_value_lands_in_its_weight(tmp_path, monkeypatch, format, model):
    """Model Garden's object-based format (and, slow: its recorded layer order at
    block_repeats 2, tensorflow/tpu's names at block_repeats 4 with 7 head convs), at small
    widths. The model is taken as the importer writes it (the real test above reads the run
    directory back)."""
    from maskspine.pretrained import importer

    written = {}
    write_run_directory = importer._write_run_directory

    def keep(network, *args, **kwargs):
        written["weights"] = {w.path: w.numpy() for w in network.weights}
        return write_run_directory(network, *args, **kwargs)

    monkeypatch.setattr(importer, "_write_run_directory", keep)
    variables, overrides = _tiny_variables(format, model)
    write(format, tmp_path / "ckpt" / "ckpt-7", variables)
    import_weights(tmp_path / "ckpt" / "ckpt-7", format=format, model=model,
                   output=tmp_path / "run", overrides=overrides)  # fmt: skip
    config = load_config(tmp_path / "run" / "config.yaml")
    mapping = variable_map(format, config, set(variables))
    assert set(mapping.values()) == set(written["weights"])
    for source, target in mapping.items():
        np.testing.assert_array_equal(written["weights"][target], variables[source], err_msg=source)


# --------------------------------------------------------------------------- sources, errors


@pytest.fixture(scope="module")
def tiny_tpu(tmp_path_factory):
    """A tiny tensorflow/tpu SpineNet-49 checkpoint (real names) and its variables."""
    variables, _ = _tiny_variables("tpu", "49")
    folder = tmp_path_factory.mktemp("tiny_tpu")
    write("tpu", folder / "model.ckpt-5", {**variables, "global_step": np.array(5, np.int64)})
    return folder / "model.ckpt-5", variables


@pytest.fixture(scope="module")
def tiny_run(tiny_tpu, tmp_path_factory):
    """`tiny_tpu` imported into an existing, empty run directory (which is simply filled)."""
    run = tmp_path_factory.mktemp("tiny_run") / "run"
    run.mkdir()
    _import(tiny_tpu[0], run)
    return run


def _import(source, output, **kwargs):
    kwargs.setdefault("format", "tpu")
    kwargs.setdefault("model", "49")
    return import_weights(source, output=output, overrides=TINY_PRETRAINED_OVERRIDES, **kwargs)


def test_sources_prefix_index_file_directory_and_tar_gz(tiny_tpu, tmp_path):
    from maskspine.pretrained.sources import open_checkpoint

    prefix, variables = tiny_tpu
    archive = tmp_path / "spinenet-49.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # as the model zoo ships: files in a folder
        for name in os.listdir(prefix.parent):
            tar.add(prefix.parent / name, arcname=f"spinenet-49/{name}")
    older = tmp_path / "several"
    write("tpu", older / "model.ckpt-9", variables)
    write("tpu", older / "model.ckpt-10", variables)  # the highest step wins
    for source, expected in [(prefix, prefix), (str(prefix) + ".index", prefix),
                             (prefix.parent, prefix), (older, older / "model.ckpt-10")]:  # fmt: skip
        with open_checkpoint(source) as checkpoint:
            assert checkpoint.prefix == str(expected) and checkpoint.format == "tpu"
    with open_checkpoint(archive) as checkpoint:
        extracted = checkpoint.prefix
        assert extracted.endswith("spinenet-49/model.ckpt-5") and os.path.exists(
            extracted + ".index"
        )
    assert not os.path.exists(extracted + ".index")  # the extracted copy is removed
    report = _import(archive, tmp_path / "run")
    assert (tmp_path / "run" / "model.weights.h5").is_file()
    assert report.prefix.endswith("model.ckpt-5")


def test_the_wrong_model_is_one_error_naming_the_right_one_and_writes_nothing(tiny_tpu, tmp_path):
    with pytest.raises(WeightsImportError) as error:
        _import(tiny_tpu[0], tmp_path / "run", model="96")
    message = str(error.value)
    assert "does not fit tpu SpineNet-96; its variables are those of --model 49" in message
    assert "model weights without a checkpoint variable" in message
    assert not (tmp_path / "run").exists() and os.listdir(tmp_path) == []


def test_a_checkpoint_of_the_other_format_is_one_error(tiny_tpu, tmp_path):
    with pytest.raises(WeightsImportError, match="use --format tpu"):
        _import(tiny_tpu[0], tmp_path / "run", format="modelgarden")
    with pytest.raises(WeightsImportError, match="no modelgarden config for SpineNet model '190'"):
        _import(tiny_tpu[0], tmp_path / "run", format="modelgarden", model="190")


def test_missing_extra_and_misshapen_variables_are_listed(tiny_tpu, tmp_path):
    _, variables = tiny_tpu
    broken = dict(variables)
    del broken["spinenet/conv2d/kernel"]
    broken["spinenet/extra_layer/kernel"] = np.zeros(3, np.float32)
    write("tpu", tmp_path / "a" / "model.ckpt-1", broken)
    with pytest.raises(WeightsImportError) as error:
        _import(tmp_path / "a", tmp_path / "run")
    message = str(error.value)
    assert "1 model weights without a checkpoint variable:\n    spinenet/conv2d/kernel" in message
    assert (
        "1 checkpoint variables with no place in the model:\n    spinenet/extra_layer/kernel"
        in message
    )
    misshapen = dict(variables)
    misshapen["rpn_head/rpn-class/bias"] = np.zeros(5, np.float32)
    write("tpu", tmp_path / "b" / "model.ckpt-1", misshapen)
    with pytest.raises(
        WeightsImportError,
        match=r"rpn_head/rpn-class/bias: \(5,\) in the checkpoint, \(3,\) in SpineNet-49",
    ):
        _import(tmp_path / "b", tmp_path / "run")
    assert not (tmp_path / "run").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".run")]  # no staging left


def test_missing_and_truncated_files_are_one_error(tiny_tpu, tmp_path):
    prefix, variables = tiny_tpu
    with pytest.raises(WeightsImportError, match="checkpoint not found"):
        _import(tmp_path / "nothing" / "model.ckpt-1", tmp_path / "run")
    with pytest.raises(WeightsImportError, match="no checkpoint in"):
        _import(tmp_path, tmp_path / "run")
    write("tpu", tmp_path / "t" / "model.ckpt-1", variables)
    index = tmp_path / "t" / "model.ckpt-1.index"
    index.write_bytes(index.read_bytes()[:100])
    with pytest.raises(WeightsImportError, match="not a readable TensorFlow checkpoint"):
        _import(tmp_path / "t", tmp_path / "run")
    write("tpu", tmp_path / "d" / "model.ckpt-1", variables)
    data = tmp_path / "d" / "model.ckpt-1.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(WeightsImportError, match="download complete"):
        _import(tmp_path / "d", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_an_existing_run_directory_is_kept_unless_forced(tiny_tpu, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(WeightsImportError, match="exists and is not empty.*--force"):
        _import(tiny_tpu[0], run)
    assert os.listdir(run) == ["notes.txt"]
    _import(tiny_tpu[0], run, force=True)
    assert sorted(os.listdir(run)) == ["config.yaml", "import.json", "model.weights.h5"]
    assert sorted(os.listdir(tmp_path)) == ["run"]  # no staging or backup left


def test_the_run_directory_config_has_the_coco_ids_and_the_overrides(tiny_run):
    assert sorted(os.listdir(tiny_run)) == ["config.yaml", "import.json", "model.weights.h5"]
    config = load_config(tiny_run / "config.yaml")
    assert config.num_classes == 91 and config.category_ids == list(range(1, 91))
    assert config.coco_classes[1] == "person" and config.coco_classes[12] == "N/A"
    assert config.coco_classes[13] == "stop sign" and config.img_height == 128
    assert config.backbone.conv_padding == "symmetric" and config.resize_method == "bilinear_legacy"


def test_transfer_to_other_classes_takes_everything_but_the_class_layers(tiny_run):
    from maskspine.checkpoints import transfer_weights
    from maskspine.modeling.factory import build_mask_rcnn

    config = load_config(tiny_run / "config.yaml",
                         ["coco_classes=[background, a, b]", "num_classes=3", "category_ids=[]"])  # fmt: skip
    report = transfer_weights(build_mask_rcnn(config), tiny_run)
    skipped = sorted(name.split("/")[1] for name, _ in report.skipped)
    assert skipped == ["box_head_box_deltas"] * 2 + ["box_head_class_logits"] * 2 + [
        "mask_head_logits"] * 2  # fmt: skip
    assert len(report.loaded) == 742 - 6


@pytest.mark.slow
@pytest.mark.parametrize(("format", "model"), CASES)
def test_every_real_model_has_the_tables_shapes_and_parameter_count(format, model):
    from maskspine.modeling.factory import build_mask_rcnn

    table = load_table(format, model)
    shapes = {name: tuple(shape) for name, shape, _ in table["variables"]}
    config = load_config(config_path(format, model), ["img_height=128", "img_width=128"])
    network = build_mask_rcnn(config)
    ours = {w.path: tuple(w.shape) for w in network.weights}
    for source, target in variable_map(format, config, set(shapes)).items():
        assert ours[target] == shapes[source], source
    assert network.count_params() == table["num_parameters"]
