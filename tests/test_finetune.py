"""Fine-tuning (scripts/run_finetuning.py, evaluate.py --protocol finetune): any tower under a new head, MAE's recipe
from timm, AttG's low-shot subsets, a folder the stock image-classification pipeline runs."""

import math
from collections import Counter

import pytest
import torch
from conftest import tiny_aclip_config, tiny_vit_kwargs
from PIL import Image
from timm.data import Mixup
from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining, pipeline

from hf_masked_vl import AClipModel, MaskedViTClassifierConfig, MaskedViTForImageClassification
from hf_masked_vl.errors import run_cli
from hf_masked_vl.evaluation.cli import main as evaluate_main
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.tokenization import build_image_processor
from hf_masked_vl.training.finetune import (
    ClassificationObjective,
    FinetuneArguments,
    FinetuningArguments,
    apply_recipe,
    class_balanced_subset,
    collate_labelled,
    recipe_for,
    train_transform,
)
from hf_masked_vl.training.finetune import main as finetune_main
from hf_masked_vl.training.trainer import MaskedVLTrainer

# no augmentation and a high lr: a few steps of a 2-layer tower must lower the training loss
QUICK = [
    "--per_device_train_batch_size", "8", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1",
    "--mixup", "0", "--cutmix", "0", "--rand_augment", "none", "--random_erasing", "0", "--label_smoothing", "0",
    "--learning_rate", "3e-3", "--max_samples", "48",
]  # fmt: skip


@pytest.fixture(scope="module")
def aclip_folder(tmp_path_factory, tokenizer):
    """A saved tiny A-CLIP checkpoint (the main job's model), as run_pretraining writes it."""
    folder = tmp_path_factory.mktemp("aclip")
    torch.manual_seed(0)
    save_checkpoint(AClipModel(tiny_aclip_config()), folder, tokenizer, build_image_processor(32))
    return folder


@pytest.fixture(scope="module")
def vit_mae_folder(tmp_path_factory):
    """A tiny transformers ViTMAE folder (facebook/vit-mae-* layout)."""
    folder = tmp_path_factory.mktemp("vit-mae")
    decoder = dict(decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=4)
    config = ViTMAEConfig(**tiny_vit_kwargs(), intermediate_size=256, decoder_intermediate_size=64, **decoder)
    ViTMAEForPreTraining(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def training_loss(folder, split_images, labels) -> float:
    """The saved classifier's mean cross-entropy on images, preprocessed by its own processor."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=split_images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return model(pixel_values=pixels, labels=torch.tensor(labels)).loss.item()


def probe_images(demo, count=48):
    from hf_masked_vl.data.images import decode_image
    from hf_masked_vl.evaluation.data import demo_splits

    train, _ = demo_splits(demo, count)
    records = list(train.records)
    return [decode_image(cell) for cell, _ in records], [label for _, label in records], train.class_names


@pytest.mark.parametrize("source", ["aclip", "vit_mae"])
def test_finetuning_lowers_the_loss_and_the_stock_pipeline_runs_the_folder(source, request, small_demo, tmp_path):
    folder = request.getfixturevalue(f"{source}_folder")
    output = tmp_path / "classifier"
    extra = ["--train_fraction", "0.5"] if source == "vit_mae" else []
    run = finetune_main(["--model_name_or_path", str(folder), "--output_dir", str(output), "--demo_dir",
                         str(small_demo.root), "--max_steps", "8", *QUICK, *extra])  # fmt: skip
    images, labels, class_names = probe_images(small_demo)
    # the head starts at ~0 (MAE's 2e-5 init): the loss starts at ln(classes) and training lowers it
    assert run.log_history[0]["loss"] == pytest.approx(math.log(len(class_names)), abs=0.05)
    assert training_loss(output, images, labels) < math.log(len(class_names)) - 0.1
    assert run.model.config.classifier_pooling == ("mean" if source == "vit_mae" else "cls")
    if source == "vit_mae":  # class-balanced half of the 48 capped records
        expected = sum(max(1, round(0.5 * n)) for n in Counter(labels).values())
        assert run.result.num_train == expected < 48
    classifier = pipeline("image-classification", model=str(output))
    answer = classifier(Image.new("RGB", (48, 48), (200, 30, 30)), top_k=len(class_names))
    assert {entry["label"] for entry in answer} == set(class_names)
    assert type(classifier.model).__name__ == "MaskedViTForImageClassification"
    card = (output / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card and "fine-tuned top-1" in card
    assert "license:" not in card and "demo-shapes" not in card and "This is a toy." in card
    assert "| `learning_rate` |" in card and "Masked Autoencoders Are Scalable Vision Learners" in card


def test_folder_runs_without_the_package(aclip_folder, small_demo, tmp_path, package_free_python):
    output = tmp_path / "classifier"
    finetune_main(["--model_name_or_path", str(aclip_folder), "--output_dir", str(output), "--demo_dir",
                   str(small_demo.root), "--max_steps", "1", *QUICK])  # fmt: skip
    image = tmp_path / "red.png"
    Image.new("RGB", (48, 48), (200, 30, 30)).save(image)
    local = pipeline("image-classification", model=str(output))(str(image), top_k=3)
    remote = package_free_python.run(f"""
        from transformers import pipeline
        classifier = pipeline("image-classification", model={str(output)!r}, trust_remote_code=True)
        assert type(classifier.model).__module__.startswith("transformers_modules")
        result = classifier({str(image)!r}, top_k=3)
    """)
    assert [r["label"] for r in remote] == [r["label"] for r in local]
    assert [r["score"] for r in remote] == pytest.approx([r["score"] for r in local], abs=1e-6)


def test_layer_decay_groups_scale_the_lr_by_depth(tmp_path):
    config = MaskedViTClassifierConfig(vision_config=tiny_vit_kwargs(num_hidden_layers=3), num_labels=5)
    model = MaskedViTForImageClassification(config)
    args = FinetuningArguments(output_dir=str(tmp_path), learning_rate=1.0, layer_decay=0.65, report_to="none")
    trainer = MaskedVLTrainer(model=model, args=args, objective=ClassificationObjective(5))
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    top = 3 + 1  # layer ids: 0 embeddings, 1..3 blocks, 4 the rest (final norm, fc_norm, head)
    assert lr_of[id(named["classifier.weight"])] == pytest.approx(1.0)
    assert lr_of[id(named["vit.embeddings.cls_token"])] == pytest.approx(0.65**top)
    for block in range(3):
        assert lr_of[id(named[f"vit.layers.{block}.mlp.fc1.weight"])] == pytest.approx(0.65 ** (top - block - 1))
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert decay_of[id(named["vit.embeddings.cls_token"])] == 0.0 and decay_of[id(named["classifier.weight"])] > 0


def test_train_fraction_is_class_balanced_seeded_and_sized():
    labels = [0] * 100 + [1] * 100 + [2] * 50
    subset = class_balanced_subset(labels, 0.1, seed=0)
    assert Counter(labels[i] for i in subset) == {0: 10, 1: 10, 2: 5}
    assert subset == class_balanced_subset(labels, 0.1, seed=0) != class_balanced_subset(labels, 0.1, seed=1)
    assert Counter(labels[i] for i in class_balanced_subset(labels, 0.01, seed=0)) == {0: 1, 1: 1, 2: 1}


def test_recipes_mae_by_size_and_attg_one_percent_is_crop_and_flip(tmp_path):
    assert recipe_for(768, None)[1]["layer_decay"] == 0.65 and recipe_for(1024, None)[1]["layer_decay"] == 0.75
    name, settings = recipe_for(768, 0.01)
    args = FinetuneArguments(model_name_or_path="x", train_fraction=0.01)
    training_args = FinetuningArguments(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=32)
    used = apply_recipe(settings, args, training_args, given={"mixup"})  # a given flag wins (here: None, unset)
    assert (used["learning_rate"], used["num_train_epochs"], args.cutmix, args.random_erasing) == (1e-3, 50, 0, 0)
    steps = [type(step).__name__ for step in train_transform(32, args, (0.5,) * 3, (0.5,) * 3).transforms]
    assert steps == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "MaybeToTensor", "Normalize"]
    base = FinetuneArguments(model_name_or_path="x")
    used = apply_recipe(recipe_for(768, None)[1], base, training_args, given=set())
    assert used["learning_rate"] == pytest.approx(5e-4 * 32 / 256)  # lr = base lr · batch / 256
    assert "RandAugment" in [
        type(step).__name__ for step in train_transform(32, base, (0.5,) * 3, (0.5,) * 3).transforms
    ]


def test_mixup_and_label_smoothing_give_soft_targets_through_timm():
    batch = collate_labelled(
        [{"pixel_values": torch.rand(3, 16, 16), "labels": label} for label in (0, 1, 2, 3)] + [None]
    )
    assert batch["num_skipped"].item() == 1
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=4)
    mixed = ClassificationObjective(4, mixup)
    targets = mixed.prepare(dict(batch), None, None)["labels"]
    assert targets.shape == (4, 4) and targets.is_floating_point()
    assert torch.allclose(targets.sum(dim=1), torch.ones(4)) and (targets < 1).all()
    smoothed = ClassificationObjective(4, None, label_smoothing=0.1).prepare(dict(batch), None, None)["labels"]
    assert torch.allclose(smoothed[0], torch.tensor([0.925, 0.025, 0.025, 0.025]))
    model = MaskedViTForImageClassification(MaskedViTClassifierConfig(vision_config=tiny_vit_kwargs(image_size=16),
                                                                       num_labels=4))  # fmt: skip
    output = model(pixel_values=batch["pixel_values"], labels=smoothed)
    expected = -(smoothed * output.logits.log_softmax(-1)).sum(-1).mean()
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_evaluate_protocol_finetune_prints_its_result(aclip_folder, small_demo, capsys):
    import hf_masked_vl.training.finetune  # noqa: F401  (registers the protocol, as scripts/evaluate.py does)

    evaluate_main(["--model", str(aclip_folder), "--protocol", "finetune", "--demo_dir", str(small_demo.root),
                   "--finetune_steps", "2", "--batch_size", "8", "--max_samples", "16"])  # fmt: skip
    out = capsys.readouterr().out
    assert "RESULT finetune_top1=" in out and "RESULT chance=" in out
    evaluate_main(["--model", str(aclip_folder), "--demo_dir", str(small_demo.root), "--max_samples", "8"])
    assert "finetune" not in capsys.readouterr().out  # a long protocol runs only when named


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train_fraction", "0"], "--train_fraction 0.0: must be in (0, 1]"),
        (["--mixup", "-1"], "--mixup -1.0: must be a finite number at least 0"),
        (["--mixupp", "0.5"], "--mixupp"),
        (["--recipe", "paper"], "--recipe is a flag of run_pretraining.py"),
        (["--dataset_name", "parquet"], "--train_split or --train_data_files"),
        (["--per_device_train_batch_size", "1"], "mixup / cutmix mix pairs"),
        (["--train_fraction", "0.01", "--per_device_train_batch_size", "16"], "images, less than one batch"),
        (["--eval_strategy", "steps"], "--eval_strategy steps: fine-tuning scores the test split after training"),
    ],
)
def test_bad_flags_are_one_error_line(flags, message, aclip_folder, small_demo, tmp_path, capsys):
    argv = ["--model_name_or_path", str(aclip_folder), "--output_dir", str(tmp_path / "out"), "--demo_dir",
            str(small_demo.root), "--max_samples", "8", "--report_to", "none", *flags]  # fmt: skip
    assert run_cli(finetune_main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err


def test_flags_given_in_any_spelling_win_over_the_recipe(tmp_path):
    from hf_masked_vl.training.finetune import parse_arguments

    args, training_args, given = parse_arguments(
        ["--model_name_or_path", "x", "--output_dir", str(tmp_path), "--mixup=0.3", "--learning-rate", "1e-3"]
    )
    used = apply_recipe(recipe_for(768, None)[1], args, training_args, given)
    assert (used["mixup"], used["learning_rate"], used["cutmix"]) == (0.3, 1e-3, 1.0)
