"""Config validation: wrong keys and values fail early and name the choices."""

import pathlib
import re

import pytest

from mtssl.config import defaults, load_config_file, validate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_pretrain_config(arg=None):
    return load_config_file(f"{ROOT / 'configs/pretrain.py'}:{arg or ''}")


def test_paper_recipe_and_runlocal_are_valid():
    paper = validate(load_pretrain_config(), device_count=8)
    assert (paper.image_size, paper.batch_size) == (227, 224)
    assert paper.model.tasks == ("depth", "normals", "contours")
    assert dict(paper.loss.weights) == dict(depth=5.0, normals=10.0, contours=1.0,
                                            semantics=1.0, adversarial=0.05)
    assert paper.optim.lr_decay_epochs == (18.0, 27.0) and paper.da.pool_size == 128
    local = validate(load_pretrain_config("runlocal"), device_count=1)
    assert local.image_size < local.synthetic.render.resolution
    with pytest.raises(ValueError, match="runlocal"):
        load_pretrain_config("fast")


def test_unknown_key_names_the_valid_keys_of_its_section():
    c = defaults()
    c.model.encodr = "alexnet"
    with pytest.raises(ValueError, match=r"model\.encodr.*adapt_layer.*encoder"):
        validate(c)
    c = defaults()
    c.synthetic.render.scene.fov = (40.0, 60.0)
    with pytest.raises(ValueError, match="fov_deg"):
        validate(c)


@pytest.mark.parametrize("path,value,names", [
    ("model.encoder", "vgg", "alexnet, resnet18, resnet50"),
    ("model.norm", "layer", "batch, group"),
    ("model.adapt_layer", "pool5", "conv1, conv2, conv3, conv4, conv5, fc6, fc7"),
    ("model.tasks", (), "depth, normals, contours"),
    ("model.tasks", ("depth", "edges"), "depth, normals, contours, semantics"),
    ("loss.gan", "wgan", "bce, lsgan"),
    ("loss.depth_variant", "l2", "reference, scale_invariant, l1"),
    ("loss.contour_weighting", "focal", "reference, hed, none"),
    ("real.crop", "squash", "auto, random_crop, center_crop, resize"),
    ("real.source", "places365", "package, imagefolder:<path>, tfds:<name>"),
    ("real.source", "tfds:", "package, imagefolder:<path>, tfds:<name>"),
    ("synthetic.source", "folder", "render, folder:<path>"),
    ("optim.d_optimizer", "rmsprop", "sgd, adam"),
    ("da.disc_batch", "mixed", "per_domain, joint"),
])
def test_bad_values_name_the_choices(path, value, names):
    c = defaults()
    section, key = path.split(".")
    c[section][key] = value
    with pytest.raises(ValueError, match=re.escape(names)):
        validate(c)


def test_impossible_combinations():
    c = defaults()
    with pytest.raises(ValueError, match="multiple of 3"):
        validate(c, device_count=3)           # 224 over 3 devices
    c.image_size = 300
    with pytest.raises(ValueError, match="larger than the renders"):
        validate(c)
    c = defaults()
    c.model.encoder = "resnet18"              # fc6 is an AlexNet layer
    c.model.adapt_layer = "fc6"
    with pytest.raises(ValueError, match="conv1, conv2, conv3, conv4, conv5"):
        validate(c)
    c = defaults()
    c.num_epochs, c.num_steps = 0, -1
    with pytest.raises(ValueError, match="num_epochs"):
        validate(c)
    c = defaults()
    c.data.threads = 0
    with pytest.raises(ValueError, match="data.threads=0 must be >= 1"):
        validate(c)
    c = defaults()
    c.synthetic.reuse = 3                     # 224 records a step in thirds
    with pytest.raises(ValueError, match="synthetic.reuse=3 must be >= 1 and divide"):
        validate(c)


def test_tasks_given_with_commas_on_the_command_line():
    """--config.model.tasks=depth,semantics over the tuple default arrives from
    ml_collections as the 1-tuple ('depth,semantics',) (as an ablation run
    showed): it names two tasks, as does the plain string."""
    from mtssl.config import tasks_of
    for given in (("depth,semantics",), "depth,semantics", ("depth", "semantics")):
        config = load_pretrain_config("runlocal").unlock()
        del config.model["tasks"]
        config.model.tasks = given
        assert tasks_of(config) == ("depth", "semantics"), given
        validate(config)
