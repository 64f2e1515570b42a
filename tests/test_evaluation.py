"""The evaluation package: labelled splits, features, DINO k-NN, linear probe, zero-shot and scripts/evaluate.py."""

import io
import json
import logging
import math
import os
import shutil
import subprocess
import sys

import datasets
import pytest
import torch
from conftest import tiny_aclip_config, tiny_vit_kwargs
from PIL import Image

from hf_masked_vl import AClipModel, MaskedViTConfig, MaskedViTModel
from hf_masked_vl.data.demo import generate_example
from hf_masked_vl.evaluation import (
    LabelledSplit,
    demo_splits,
    evaluate,
    evaluate_many,
    extract_features,
    image_features,
    image_tower,
    linear_probe,
    load_labelled_split,
    weighted_knn,
    zero_shot_accuracy,
)
from hf_masked_vl.evaluation.cli import main as evaluate_main
from hf_masked_vl.hub import save_checkpoint
from hf_masked_vl.tokenization import build_image_processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def centres(num_classes: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(C, dim) class centres at distance 3 from the origin in random directions."""
    return 3 * torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=generator), dim=1)


def clusters(centres: torch.Tensor, num_per_class: int, generator: torch.Generator, spread: float):
    """Features (N, dim) scattered around the class centres, labels (N,)."""
    labels = torch.arange(len(centres)).repeat_interleave(num_per_class)
    return centres[labels] + spread * torch.randn(len(labels), centres.shape[1], generator=generator), labels


# ---------------------------------------------------------------- k-NN


def reference_knn(train, train_labels, test, test_labels, num_classes, k, temperature):
    """DINO's weighted vote written plainly: loops over test rows, neighbours and classes."""
    correct1 = correct5 = 0
    for row, target in zip(test.tolist(), test_labels.tolist()):
        row_norm = math.sqrt(sum(v * v for v in row))
        similarities = []
        for j, other in enumerate(train.tolist()):
            other_norm = math.sqrt(sum(v * v for v in other))
            similarities.append((sum(a * b for a, b in zip(row, other)) / (row_norm * other_norm), j))
        similarities.sort(reverse=True)
        votes = [0.0] * num_classes
        for similarity, j in similarities[:k]:
            votes[int(train_labels[j])] += math.exp(similarity / temperature)
        ranked = [c for c in sorted(range(num_classes), key=lambda c: -votes[c]) if votes[c] > 0]
        correct1 += ranked[0] == target
        correct5 += target in ranked[:5]
    return correct1 / len(test), correct5 / len(test)


def test_knn_matches_a_brute_force_reference(caplog):
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 8, generator=generator), torch.randn(25, 8, generator=generator)
    train_labels = torch.randint(0, 7, (60,), generator=generator)
    test_labels = torch.randint(0, 7, (25,), generator=generator)
    with caplog.at_level(logging.WARNING):
        results = weighted_knn(train, train_labels, test, test_labels, 7, ks=(1, 5, 20, 100), chunk_size=4)
    assert "k=100" in caplog.text and "using k=60" in caplog.text
    assert {k: r.k for k, r in results.items()} == {1: 1, 5: 5, 20: 20, 100: 60}
    for k, result in results.items():
        top1, top5 = reference_knn(train, train_labels, test, test_labels, 7, result.k, 0.07)
        assert result.top1 == pytest.approx(top1) and result.top5 == pytest.approx(top5), k
    # the temperature matters: a huge one is a plain majority vote, a different classifier
    flat = weighted_knn(train, train_labels, test, test_labels, 7, ks=(20,), temperature=1e4)
    assert flat[20].top1 == pytest.approx(reference_knn(train, train_labels, test, test_labels, 7, 20, 1e4)[0])


def test_knn_on_separable_data_is_perfect_and_chunking_does_not_matter():
    generator = torch.Generator().manual_seed(1)
    means = centres(6, 16, generator)
    train, train_labels = clusters(means, 30, generator, spread=0.3)
    test, test_labels = clusters(means, 10, generator, spread=0.3)
    whole = weighted_knn(train, train_labels, test, test_labels, 6, ks=(10, 20))
    chunked = weighted_knn(train, train_labels, test, test_labels, 6, ks=(10, 20), chunk_size=7)
    assert whole == chunked
    assert whole[20].top1 == 1.0 and whole[20].top5 == 1.0
    few = weighted_knn(train, train_labels % 3, test, test_labels % 3, 3, ks=(10,))
    assert few[10].top5 is None
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        weighted_knn(train, train_labels, test, test_labels, 3)


# ---------------------------------------------------------------- linear probe


def test_linear_probe_separable_random_labels_and_determinism():
    generator = torch.Generator().manual_seed(2)
    means = centres(5, 24, generator)
    train, train_labels = clusters(means, 40, generator, spread=0.3)
    test, test_labels = clusters(means, 20, generator, spread=0.3)
    result = linear_probe(train, train_labels, test, test_labels, 5)
    assert result.top1 >= 0.98 and result.train_top1 >= 0.98 and result.top5 == 1.0
    assert linear_probe(train, train_labels, test, test_labels, 5) == result  # deterministic

    noise_train = torch.randn(200, 24, generator=generator)
    noise_test = torch.randn(400, 24, generator=generator)
    random_train = torch.randint(0, 4, (200,), generator=generator)
    random_test = torch.randint(0, 4, (400,), generator=generator)
    chance = linear_probe(noise_train, random_train, noise_test, random_test, 4)
    assert chance.top1 < 0.25 + 0.1 and chance.top5 is None
    assert chance.train_top1 > chance.top1  # it fits the training labels, which do not generalise
    strong = linear_probe(noise_train, random_train, noise_test, random_test, 4, weight_decay=10.0)
    assert strong != chance


# ---------------------------------------------------------------- zero-shot


CLASSES, TEMPLATES = ["red circle", "blue square", "green star"], ["a photo of a {}.", "a drawing of the {}"]


def reference_class_embeddings(model, tokenizer, classes, templates) -> torch.Tensor:
    """The template ensemble written as loops: per class, per template, one prompt through the text tower alone,
    L2-normalised; the class embedding is the renormalised mean over its templates. Returns (C, E)."""
    rows = []
    for name in classes:
        per_template = []
        for template in templates:
            tokens = tokenizer(template.format(name), padding="max_length", max_length=16, return_tensors="pt")
            text = model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output[0]
            per_template.append(torch.nn.functional.normalize(text, dim=0))
        rows.append(torch.nn.functional.normalize(sum(per_template) / len(per_template), dim=0))
    return torch.stack(rows)


@torch.no_grad()
def test_zero_shot_classifier_and_accuracy_match_a_loop_over_classes_and_templates(tokenizer):
    from hf_masked_vl.evaluation.features import LabelledFeatures
    from hf_masked_vl.evaluation.zero_shot import zero_shot_metrics
    from hf_masked_vl.models.pipeline_zero_shot import build_zero_shot_classifier

    torch.manual_seed(0)
    model = AClipModel(tiny_aclip_config()).eval()
    expected = reference_class_embeddings(model, tokenizer, CLASSES, TEMPLATES)
    classifier = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES)
    torch.testing.assert_close(classifier, expected, atol=1e-6, rtol=1e-5)
    # with one template per class the ensemble is that template's embedding
    single = build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES[1:])
    torch.testing.assert_close(single, reference_class_embeddings(model, tokenizer, CLASSES, TEMPLATES[1:]))

    # accuracy: each image's most similar class embedding (and the top-k, k = 3 classes here) against its label
    image_embeds = torch.randn(12, expected.shape[1])
    labels = torch.arange(12) % 3
    metrics = zero_shot_metrics(model, tokenizer, LabelledFeatures(image_embeds, labels), CLASSES, TEMPLATES)
    hits = 0
    for embed, label in zip(image_embeds, labels.tolist()):
        similarities = [torch.dot(torch.nn.functional.normalize(embed, dim=0), row).item() for row in expected]
        hits += max(range(3), key=similarities.__getitem__) == label
    assert metrics.top1 == pytest.approx(hits / 12) and metrics.top5 == 1.0 and metrics.chance == pytest.approx(1 / 3)


# ---------------------------------------------------------------- features


def test_backbone_features_are_the_final_norm_cls_token_of_the_image_tower():
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, 32, 32)
    vit = MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs())).eval()
    aclip = AClipModel(tiny_aclip_config()).eval()
    with torch.no_grad():
        assert image_tower(vit) is vit and image_tower(aclip) is aclip.vision_model
        features = image_features(vit, pixels)
        assert features.shape == (3, 64) and features.dtype == torch.float32
        assert torch.equal(features, vit(pixels).last_hidden_state[:, 0])
        assert torch.equal(image_features(aclip, pixels), aclip.vision_model(pixels).last_hidden_state[:, 0])
        embedding = image_features(aclip, pixels, kind="embedding")
        assert embedding.shape == (3, 32)
        assert torch.equal(embedding, aclip.get_image_features(pixels).pooler_output)
    with pytest.raises(ValueError, match="get_image_features"):
        image_features(vit, pixels, kind="embedding")


def test_backbone_features_of_transformers_vit_vit_mae_and_clip():
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        ViTConfig,
        ViTForImageClassification,
        ViTMAEConfig,
        ViTMAEModel,
    )

    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32)
    small = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    small["intermediate_size"] = 64
    with torch.no_grad():
        classifier = ViTForImageClassification(ViTConfig(**small, num_labels=3)).eval()
        assert image_tower(classifier) is classifier.vit
        expected = classifier.vit(pixels).last_hidden_state[:, 0]  # after the final norm, not the tanh pooler
        assert torch.equal(image_features(classifier, pixels), expected)

        mae = ViTMAEModel(ViTMAEConfig(**small, mask_ratio=0.75)).eval()
        features = image_features(mae, pixels)
        assert mae.config.mask_ratio == 0.75  # restored
        mae.config.mask_ratio = 0.0
        outputs = mae(pixels, noise=torch.arange(16.0).expand(2, -1))
        assert outputs.last_hidden_state.shape[1] == 1 + 16  # every patch
        assert torch.allclose(features, outputs.last_hidden_state[:, 0], atol=1e-6)

        clip = CLIPVisionModel(CLIPVisionConfig(**small)).eval()
        assert torch.equal(image_features(clip, pixels), clip(pixels).pooler_output)  # post_layernorm'd CLS


def _png(color, size=40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_extract_features_batches_skips_and_counts():
    records = [({"bytes": _png((30 * i, 0, 0)), "path": None}, i % 3) for i in range(7)]
    records.insert(2, ({"bytes": b"broken", "path": None}, 1))
    split = LabelledSplit(records, ["a", "b", "c"], "toy")
    torch.manual_seed(0)
    model = MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs()))
    processor = build_image_processor(32)
    small_batches = extract_features(model, processor, split, batch_size=3)
    one_batch = extract_features(model, processor, split, batch_size=64)
    assert not model.training
    assert small_batches.num_skipped == 1 and small_batches.features.shape == (7, 64)
    assert small_batches.labels.tolist() == [i % 3 for i in range(7)]
    assert small_batches.features.device.type == "cpu" and small_batches.features.dtype == torch.float32
    assert torch.allclose(small_batches.features, one_batch.features, atol=1e-5)
    with pytest.raises(ValueError, match="no decodable images in split toy"):
        extract_features(model, processor, LabelledSplit(records[2:3], ["a", "b", "c"], "toy"))


# ---------------------------------------------------------------- data


def test_demo_probe_split_and_demo_splits(small_demo):
    assert small_demo.probe_files and "-p96-" in small_demo.root.name
    probe, evaluation = generate_example(0, "probe", 3, 48), generate_example(0, "eval", 3, 48)
    assert probe["image"] != evaluation["image"] and probe["num_objects"] == 1 and "label" in probe
    train, test = demo_splits(small_demo, max_samples=10)
    assert (train.name, test.name) == ("demo shapes (probe)", "demo shapes (eval)")
    assert train.class_names == test.class_names == small_demo.class_names
    labels = [label for _, label in train.records]
    assert len(labels) == 10 and all(0 <= label < 24 for label in labels)
    probe_table = datasets.load_dataset("parquet", data_files=small_demo.probe_files, split="train")
    assert len(probe_table) == 96 and probe_table.features["label"].names == small_demo.class_names


def test_load_labelled_split_errors_name_the_column(small_demo, tmp_path):
    with pytest.raises(ValueError, match=r"label column 'target'.*available columns: \['caption', 'image'"):
        load_labelled_split("parquet", small_demo.eval_files, label_column="target")
    with pytest.raises(ValueError, match=r"image column 'img'.*available columns"):
        load_labelled_split("parquet", small_demo.eval_files, image_column="img")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    path = tmp_path / "ints.parquet"
    rows = [{"image": {"bytes": _png((0, 0, 0)), "path": None}, "label": 5}]
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(path))
    with pytest.raises(ValueError, match="not a ClassLabel: pass the class names"):
        load_labelled_split("parquet", [str(path)])
    split = load_labelled_split("parquet", [str(path)], class_names=["a", "b"])
    assert split.name == "parquet (train)"
    with pytest.raises(ValueError, match=r"label 5 is outside \[0, 2\)"):
        list(split.records)


# ---------------------------------------------------------------- evaluate()


class CountingSplit(LabelledSplit):
    """Counts passes over its records."""

    def __init__(self, split: LabelledSplit):
        super().__init__(split.records, split.class_names, split.name)
        self.passes = 0
        inner, outer = split.records, self

        class Records:
            def __iter__(self):
                outer.passes += 1
                return iter(inner)

        self.records = Records()


def test_evaluate_many_reads_each_split_once_and_matches_the_single_protocols(small_demo, tokenizer):
    torch.manual_seed(0)
    model = AClipModel(tiny_aclip_config(zero_shot_templates=("a photo of a {}.",)))
    processor = build_image_processor(32)
    train, test = (CountingSplit(split) for split in demo_splits(small_demo, max_samples=24))
    results = evaluate_many(
        model, ["zero_shot", "knn", "linear"], image_processor=processor, test_split=test, train_split=train,
        tokenizer=tokenizer,
    )  # fmt: skip
    assert (train.passes, test.passes) == (1, 1)
    assert list(results) == ["zero_shot", "knn", "linear"]
    knn = results["knn"]
    assert knn.top1 == knn.details["top1_k20"]
    assert knn.notes == ["k=100 clipped to the 24 train images", "k=200 clipped to the 24 train images"]
    assert (knn.num_train, knn.num_test, knn.num_classes, knn.dataset_name) == (24, 24, 24, "demo shapes (eval)")
    for result in results.values():
        assert result.chance == pytest.approx(1 / 24)
        assert all(0 <= value <= 1 for value in [result.top1, *result.details.values()])
    legacy = zero_shot_accuracy(model, tokenizer, processor, test, ["a photo of a {}."])
    assert results["zero_shot"].top1 == pytest.approx(legacy.top1)
    assert results["zero_shot"].details["top5"] == pytest.approx(legacy.top5)
    single = evaluate(model, "linear", image_processor=processor, test_split=test, train_split=train)
    assert single == results["linear"]


def test_evaluate_errors_are_clear(small_demo, tokenizer):
    vit = MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs()))
    train, test = demo_splits(small_demo, max_samples=4)
    kwargs = dict(image_processor=build_image_processor(32), test_split=test)
    with pytest.raises(ValueError, match="MaskedViTModel has none. Protocols this model supports: knn, linear"):
        evaluate(vit, "zero_shot", tokenizer=tokenizer, **kwargs)
    with pytest.raises(ValueError, match="knn needs a labelled train split"):
        evaluate(vit, "knn", **kwargs)
    with pytest.raises(ValueError, match="unknown protocol 'svm'"):
        evaluate(vit, "svm", train_split=train, **kwargs)


# ---------------------------------------------------------------- scripts/evaluate.py


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, tokenizer):
    """A tiny A-CLIP folder as written by training (save_checkpoint) and a plain MaskedViTModel folder."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("eval-ckpt")
    aclip = AClipModel(tiny_aclip_config(zero_shot_templates=("a photo of a {}.",))).eval()
    save_checkpoint(aclip, root / "a-clip", tokenizer, build_image_processor(32))
    vit = MaskedViTModel(MaskedViTConfig(**tiny_vit_kwargs()))
    vit.save_pretrained(root / "vit")
    build_image_processor(32).save_pretrained(root / "vit")
    return root / "a-clip", root / "vit"


def parse_results(stdout: str) -> dict[str, float]:
    lines = stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT chance=")
    return {
        key: float(value)
        for key, value in (line.removeprefix("RESULT ").split("=") for line in lines if line.startswith("RESULT "))
    }


def test_evaluate_script_runs_every_protocol_on_a_saved_a_clip(checkpoints, small_demo):
    command = [sys.executable, "scripts/evaluate.py", "--model", str(checkpoints[0])]
    command += ["--protocol", "zero_shot", "knn", "linear", "--max_samples", "48", "--demo_dir", str(small_demo.root)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    results = parse_results(result.stdout)
    expected = {"zero_shot_top1", "zero_shot_top5", "knn_top1", "linear_top1", "linear_top5", "linear_train_top1"}
    expected |= {f"knn_top{n}_k{k}" for n in (1, 5) for k in (5, 10, 20, 100, 200)} | {"chance"}
    assert set(results) == expected
    assert all(0 <= value <= 1 for value in results.values())
    assert results["chance"] == pytest.approx(1 / 24, abs=1e-4)
    assert "k=100 clipped to the 48 train images" in result.stdout


def test_plain_vit_checkpoint_gets_knn_and_linear_but_not_zero_shot(checkpoints, small_demo, capsys):
    argv = ["--model", str(checkpoints[1]), "--demo_dir", str(small_demo.root), "--max_samples", "16"]
    results = evaluate_main(argv)
    assert list(results) == ["knn", "linear"]  # the default: every protocol this model supports
    assert set(parse_results(capsys.readouterr().out)) >= {"knn_top1", "linear_top1", "chance"}
    with pytest.raises(ValueError, match="zero_shot needs a dual encoder.*supports: knn, linear"):
        evaluate_main([*argv, "--protocol", "zero_shot", "knn"])
    dataset = ["--model", str(checkpoints[1]), "--dataset_name", "parquet", "--data_files", *small_demo.eval_files,
               "--test_split", "train"]  # fmt: skip
    with pytest.raises(ValueError, match="knn needs a labelled train split"):
        evaluate_main(dataset)  # no train split given: nothing this model can do
    results = evaluate_main([*dataset, "--train_data_files", *small_demo.probe_files, "--max_samples", "16"])
    assert list(results) == ["knn", "linear"] and results["knn"].num_train == 16


def test_own_checkpoints_load_without_trust_remote_code_but_foreign_code_needs_it(checkpoints, tmp_path, capsys):
    folder = tmp_path / "foreign"
    shutil.copytree(checkpoints[0], folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "someone_elses_clip"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        evaluate_main(["--model", str(folder), "--protocol", "zero_shot"])
