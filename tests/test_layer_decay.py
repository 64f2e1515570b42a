"""`--layer_decay`: the image tower declares its layer ids (`layer_id`, `num_layers_for_decay`, as it declares
`no_weight_decay()`), so every method's optimizer decays the tower's layers wherever the tower sits (`vision_model`,
`vit`); where the decay cannot apply it is refused with one line, never ignored."""

import pytest
import torch
from conftest import tiny_vit_kwargs

from hf_masked_vl.errors import UsageError
from hf_masked_vl.methods import available_methods, get_method
from hf_masked_vl.methods.base import Objective, build_config
from hf_masked_vl.models import LiTConfig, LiTModel, MaskedViTConfig, MaskedViTModel, MREViTForDINO
from hf_masked_vl.training.arguments import PretrainingArguments
from hf_masked_vl.training.trainer import MaskedVLTrainer, layer_decay_scales

LR, DECAY = 1e-3, 0.75
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    """One trainer whose `create_optimizer(model)` builds the groups of any model given to it."""
    args = PretrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("decay")), layer_decay=DECAY, learning_rate=LR, report_to="none"
    )
    return MaskedVLTrainer(model=torch.nn.Linear(2, 2), args=args, objective=Objective())


def learning_rates(trainer, model) -> dict[str, float]:
    trainer.optimizer = None
    optimizer = trainer.create_optimizer(model)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    return {name: lr_of[id(p)] for name, p in model.named_parameters() if p.requires_grad}


def tiny_model(method: str):
    method_class = get_method(method)
    if method == "lit":
        config = LiTConfig(vision_config=tiny_vit_kwargs(), text_config=TINY_TEXT, unlocked_vision_layers=1)
        model = LiTModel(config)
        model.lock_image_tower()  # as `--method lit` does: only the last block and the final norm train
        return model
    config = build_config(method_class.config_class, "tiny")
    return (method_class.model_class or MREViTForDINO)._from_config(config)  # mre_distill: the teacher's class


@pytest.mark.parametrize("method", sorted(available_methods()))
def test_each_method_decays_its_image_tower_by_layer(trainer, method):
    model = tiny_model(method)
    (prefix, tower), *others = [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedViTModel)]
    assert not others
    depth = tower.config.num_hidden_layers
    lrs = learning_rates(trainer, model)
    scales = trainer.learning_rate_scales(model)  # MRE's relation scalars keep their own factor
    expected = {name: LR * scales.get(name, 1.0) for name in lrs}  # outside the tower: no decay
    for name, parameter in tower.named_parameters():
        if parameter.requires_grad:  # embeddings 0, block i: i + 1, final norm: depth + 1 (lr × 1)
            layer = 0 if name.startswith("embeddings.") else depth + 1
            layer = int(name.split(".")[1]) + 1 if name.startswith("layers.") else layer
            expected[f"{prefix}.{name}"] = LR * DECAY ** (depth + 1 - layer)
    assert lrs == pytest.approx(expected, rel=1e-12)
    if method != "lit":
        assert lrs[f"{prefix}.embeddings.cls_token"] == pytest.approx(LR * DECAY ** (depth + 1))
        assert lrs[f"{prefix}.layers.0.attn.qkv.weight"] == pytest.approx(LR * DECAY**depth)
    assert lrs[f"{prefix}.layers.{depth - 1}.mlp.fc2.weight"] == pytest.approx(LR * DECAY)


def test_layer_decay_that_cannot_apply_is_refused():
    locked = LiTModel(LiTConfig(vision_config=tiny_vit_kwargs(), text_config=TINY_TEXT))
    locked.lock_image_tower()
    with pytest.raises(UsageError, match=r"^--layer_decay 0\.75: the vision_model of this LiTModel is frozen"):
        layer_decay_scales(locked, DECAY)
    with pytest.raises(UsageError, match=r"^--layer_decay 0\.75: a Linear declares no layer ids"):
        layer_decay_scales(torch.nn.Linear(2, 2), DECAY)
    vision = MaskedViTConfig(**tiny_vit_kwargs())
    two_towers = torch.nn.ModuleDict({"a": MaskedViTModel(vision), "b": MaskedViTModel(vision)})
    with pytest.raises(UsageError, match=r"several towers with layer ids \(a, b\)"):
        layer_decay_scales(two_towers, DECAY)
