"""Config loading, overrides and validation errors (maskspine/config.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from maskspine.config import (
    Config,
    ConfigError,
    config_to_dict,
    load_config,
    save_config,
)

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_loads(path: Path):
    config = load_config(path)
    assert isinstance(config, Config)
    raw = yaml.safe_load(path.read_text())
    # Values written in the file arrive unchanged (spot checks across sections).
    assert config.img_width == raw["img_width"]
    assert config.backbone.arch == str(raw["backbone"]["arch"])
    if "train_cfg" in raw and "rpn_proposal" in raw["train_cfg"]:
        assert config.train_cfg.rpn_proposal.nms_pre == raw["train_cfg"]["rpn_proposal"]["nms_pre"]


def test_reference_sizes_and_backbones():
    expected = {
        "mask_rcnn_49S_640": ("49S", 640),
        "mask_rcnn_49_640": ("49", 640),
        "mask_rcnn_96_1024": ("96", 1024),
        "mask_rcnn_143_1280": ("143", 1280),
    }
    for stem, (arch, size) in expected.items():
        config = load_config(Path(__file__).parents[1] / "configs" / f"{stem}.yaml")
        assert (config.backbone.arch, config.img_height, config.img_width) == (arch, size, size)
        assert config.num_classes == 81 and config.coco_classes[0] == "background"
        assert config.coco_classes[1] == "person" and config.coco_classes[-1] == "toothbrush"


def test_overrides_are_parsed_with_yaml_typing(tmp_path):
    path = write(tmp_path, "lr: 0.1\nbackbone: {arch: '49'}\n")
    config = load_config(
        path,
        [
            "backbone.arch=96",
            "lr=0.02",
            "lr_steps=[8,11]",
            "train_cfg.rcnn.sampler.add_gt_as_proposals=false",
            "test_cfg.rcnn.score_thr=0.3",
            "coco_classes=from_data",
        ],
    )
    assert config.backbone.arch == "96"
    assert config.lr == pytest.approx(0.02)
    assert config.lr_steps == [8, 11]
    assert config.train_cfg.rcnn.sampler.add_gt_as_proposals is False
    # untouched siblings keep their defaults
    assert config.train_cfg.rcnn.sampler.num == 512
    assert config.test_cfg.rcnn.score_thr == pytest.approx(0.3)
    assert config.classes_from_data


def test_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["lr"])


def test_unknown_top_level_key_names_key_file_and_closest(tmp_path):
    path = write(tmp_path, "backbon:\n  arch: '49'\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "'backbon'" in message and str(path) in message and "'backbone'" in message


def test_unknown_nested_key_suggests_the_nested_key(tmp_path):
    path = write(tmp_path, "backbone:\n  arhc: '49'\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "'backbone.arhc'" in str(error.value) and "'backbone.arch'" in str(error.value)


def test_unknown_key_from_an_override_is_reported():
    with pytest.raises(ConfigError, match=r"'leraning_rate'|'lr_stpes'"):
        load_config(None, ["lr_stpes=[1,2]"])


def test_wrong_type_names_key_value_and_expected_type(tmp_path):
    path = write(tmp_path, "lr: fast\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert "lr" in message and "'fast'" in message and "float" in message


def test_wrong_type_in_a_list(tmp_path):
    path = write(tmp_path, "lr_steps: [8, eleven]\n")
    with pytest.raises(ConfigError, match=r"lr_steps\[1\].*'eleven'.*int"):
        load_config(path)


def test_a_section_given_as_a_scalar_is_a_clear_error(tmp_path):
    path = write(tmp_path, "backbone: 49\n")
    with pytest.raises(ConfigError, match="backbone must be a mapping"):
        load_config(path)


def test_num_classes_must_match_the_class_list(tmp_path):
    path = write(tmp_path, "coco_classes: [background, cat, dog]\nnum_classes: 4\n")
    with pytest.raises(ConfigError, match="num_classes is 4 but coco_classes has 3"):
        load_config(path)


def test_num_classes_is_free_when_classes_come_from_data(tmp_path):
    path = write(tmp_path, "coco_classes: from_data\nnum_classes: 4\n")
    assert load_config(path).classes_from_data


def test_bad_image_size_names_the_divisor(tmp_path):
    path = write(tmp_path, "img_width: 600\n")
    with pytest.raises(ConfigError, match="img_width=600.*multiple of 128"):
        load_config(path)


def test_image_size_must_be_a_multiple_of_128_even_below_max_level_7(tmp_path):
    # 192 = 3 * 2**6: SpineNet still builds level-7 blocks (tests/modeling/test_spinenet.py).
    levels = "backbone: {max_level: 6}\nrpn: {anchor_generator: {strides: [8, 16, 32, 64]}}\n"
    path = write(tmp_path, levels + "img_height: 192\nimg_width: 256\n")
    with pytest.raises(ConfigError, match=r"img_height=192 must be a positive multiple of 128"):
        load_config(path)
    config = load_config(write(tmp_path, levels + "img_height: 384\nimg_width: 256\n"))
    assert (config.img_height, config.backbone.max_level) == (384, 6)


def test_unknown_backbone_arch_is_rejected_with_a_suggestion(tmp_path):
    path = write(tmp_path, "backbone: {arch: '49s'}\n")
    with pytest.raises(ConfigError, match="'49S'"):
        load_config(path)


def test_mindspore_keys_are_ignored_with_one_warning(tmp_path, caplog):
    path = write(tmp_path, "device_target: GPU\nmode: graph\nenable_graph_kernel: 0\nlr: 0.1\n")
    with caplog.at_level(logging.WARNING, logger="maskspine.config"):
        config = load_config(path)
    assert config.lr == pytest.approx(0.1)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert all(k in warnings[0] for k in ("device_target", "mode", "enable_graph_kernel"))


def test_reference_flag_styles_are_accepted(tmp_path):
    path = write(tmp_path, "bbox_head: {reg_class_agnostic: False}\nmixed_precision: 1\n")
    config = load_config(path)
    # the reference's mixed_precision folds into precision: mixed where the hardware runs it
    assert config.bbox_head.reg_class_agnostic is False and config.precision == "auto"


def test_save_then_load_round_trip(tmp_path):
    config = load_config(CONFIGS[0], ["lr=0.03", "category_ids=[]"])
    save_config(config, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert config_to_dict(again) == config_to_dict(config)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "lr: [1, 2\n"))


def test_one_category_id_rule_for_every_output():
    config = load_config(
        Path(__file__).parents[1] / "configs" / "shapes_demo.yaml",
        ["coco_classes=[background, a, b, c]", "num_classes=4", "category_ids=[]"],
    )
    assert config.output_category_ids == [1, 2, 3]  # none listed: 1..K in coco_classes order
    config.category_ids = [5, 9, 11]
    assert config.output_category_ids == [5, 9, 11]
    config.coco_classes = "from_data"
    config.category_ids = []
    with pytest.raises(ConfigError, match="from_data"):
        _ = config.output_category_ids
