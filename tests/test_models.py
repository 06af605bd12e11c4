"""The CNNs: shapes follow the data, layers freeze by name, and they learn real digits in memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnspark.errors import ConfigError
from cnnspark.models import MODELS, find_layer, freeze, get_model, layer_names, set_train_mode
from cnnspark.train import TrainConfig, learning_rate

# Several threads per process spin against each other on a busy 2-core machine (30x slower).
torch.set_num_threads(1)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize(("channels", "size", "classes"), [(1, 8, 10), (3, 32, 5), (4, 3, 2)])
def test_models_follow_channels_size_and_classes(name, channels, size, classes):
    model = get_model(name, in_channels=channels, num_classes=classes, image_size=size)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)


def test_bad_model_arguments_say_what_to_do():
    with pytest.raises(ConfigError, match="unknown model 'vgg'.*cnn"):
        get_model("vgg", in_channels=1, num_classes=10, image_size=8)
    with pytest.raises(ConfigError, match="at least 2 labels"):
        get_model("cnn", in_channels=1, num_classes=1, image_size=8)
    model = get_model("resnet", in_channels=1, num_classes=10, image_size=8)
    with pytest.raises(ConfigError, match="no layer 'layer9'.*layer1"):
        find_layer(model, "layer9")


def test_frozen_layers_do_not_change_while_the_rest_trains():
    torch.manual_seed(0)
    model = get_model("cnn", in_channels=1, num_classes=10, image_size=8)
    prefixes = ("features.conv1", "features.conv2")
    frozen = freeze(model, prefixes)
    assert frozen and all(n.startswith(prefixes) for n in frozen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(3):
        set_train_mode(model, prefixes)
        assert not model.features.conv1.bn.training and model.features.conv3.bn.training
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(8, 1, 8, 8)), torch.randint(0, 10, (8,))).backward()
        optimizer.step()
    after = model.state_dict()
    for key, value in before.items():
        same = torch.equal(value, after[key])
        if key.startswith(prefixes):
            assert same, f"frozen {key} changed (BatchNorm statistics included)"
        elif key.endswith("weight") and "bn" not in key:
            assert not same, f"trainable {key} did not change"
    assert "features.conv4" in layer_names(model)


@pytest.mark.parametrize("name", ["cnn", "resnet-tiny"])
def test_models_learn_real_digits_in_memory(name):
    """A plain in-memory torch dataset of the real scikit-learn digits: the loss falls well."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.from_numpy((digits.images[:600] / 16.0).astype(np.float32)).unsqueeze(1)
    y = torch.from_numpy(digits.target[:600].astype(np.int64))
    model = get_model(name, in_channels=1, num_classes=10, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    losses = []
    for _epoch in range(3):
        model.train()
        for i in range(0, len(y), 32):
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            losses.append(float(F.cross_entropy(model(x), y)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_learning_rate_warms_up_scales_and_anneals():
    config = TrainConfig(lake="l", dataset="d", epochs=10, lr=0.1, warmup_epochs=1.0)
    assert learning_rate(config, 4, 0.0) == pytest.approx(0.1)
    assert learning_rate(config, 4, 1.0) == pytest.approx(0.4)
    assert learning_rate(config, 4, 0.5) == pytest.approx(0.25)
    assert learning_rate(config, 4, 5.5) == pytest.approx(0.2)
    assert learning_rate(config, 4, 10.0) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(config, 1, 0.3) == pytest.approx(0.1)


def test_local_master_slots():
    from cnnspark.train import local_slots

    assert [local_slots(m) for m in ("local[2]", "local[8]", "local", "local[3,2]")] == [2, 8, 1, 3]
    assert local_slots("spark://host:7077") is None and local_slots("yarn") is None
