"""Saved dual-encoder folders behave like CLIP folders: `AutoProcessor` gives a `CLIPProcessor` whose output the
model takes (`logits_per_image`), `pipeline("image-feature-extraction")` returns the image embedding, and the
training-only heads (A-CLIP's SimCLR / BYOL) are left out of the exported weights unless asked for."""

import logging

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_aclip_config, tiny_vit_kwargs
from PIL import Image
from safetensors import safe_open
from transformers import AutoModel, AutoProcessor, CLIPProcessor, pipeline

from hf_masked_vl import AClipModel, LiTConfig, LiTModel, UTAConfig, UTAModel
from hf_masked_vl.hub import checkpoint_files, save_checkpoint
from hf_masked_vl.loading import load_checked
from hf_masked_vl.tokenization import build_image_processor
from hf_masked_vl.training.run import parse_arguments

LABELS = ["a red circle", "a blue square", "a green star"]
TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16
)
DUAL_ENCODERS = {
    "a_clip": lambda: AClipModel(tiny_aclip_config()),
    "uta": lambda: UTAModel(UTAConfig(vision_config=tiny_vit_kwargs(), text_config=TEXT, projection_dim=32)),
    "lit": lambda: LiTModel(LiTConfig(vision_config=tiny_vit_kwargs(), text_config=TEXT, projection_dim=32)),
}
HEADS = ("simclr_head.", "byol_projector.", "byol_predictor.")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "image.png"
    Image.new("RGB", (40, 44), (200, 30, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """name → (model, folder) of each dual encoder, saved as a run saves it; "a_clip_heads" keeps the heads."""
    saved = {}
    for name, build in {**DUAL_ENCODERS, "a_clip_heads": DUAL_ENCODERS["a_clip"]}.items():
        torch.manual_seed(0)
        model = build().eval()
        folder = tmp_path_factory.mktemp(name)
        save_checkpoint(model, folder, tokenizer, build_image_processor(32), training_heads=name == "a_clip_heads")
        saved[name] = model, folder
    return saved


def saved_keys(folder) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        return set(handle.keys())


def image_embedding(model, processor, image) -> torch.Tensor:
    """The normalised projected image embedding (E,) the zero-shot pipeline compares with the label embeddings."""
    pixel_values = processor(images=Image.open(image), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return F.normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)[0]


@pytest.mark.parametrize("name", list(DUAL_ENCODERS))
def test_the_clip_processor_idiom_runs_on_every_dual_encoder_folder(folders, image, name):
    _, folder = folders[name]
    processor = AutoProcessor.from_pretrained(folder)
    assert isinstance(processor, CLIPProcessor)
    assert "processor_config.json" in checkpoint_files(folder)  # pushed with the folder
    model = AutoModel.from_pretrained(folder).eval()
    inputs = processor(text=LABELS, images=Image.open(image), return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    assert logits.shape == (1, len(LABELS))
    text = F.normalize(model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output, dim=-1)
    expected = model.logit_scale.exp() * image_embedding(model, processor, image) @ text.t()
    assert torch.allclose(logits[0], expected, atol=1e-5)


@pytest.mark.parametrize("name", list(DUAL_ENCODERS))
def test_image_feature_extraction_pipeline_returns_the_image_embedding(folders, image, name):
    model, folder = folders[name]
    features = torch.tensor(pipeline("image-feature-extraction", model=str(folder))(str(image)))
    expected = image_embedding(model, AutoProcessor.from_pretrained(folder), image)
    assert features.shape == (1, model.config.projection_dim)
    assert torch.allclose(features[0], expected, atol=1e-5)


def test_processor_and_feature_pipeline_without_the_package(folders, image, package_free_python):
    model, folder = folders["a_clip"]
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(text=LABELS, images=Image.open(image), return_tensors="pt", padding=True)
    with torch.no_grad():
        local_logits = model(**inputs).logits_per_image[0].tolist()
    local_features = image_embedding(model, processor, image).tolist()
    kind, logits, features = package_free_python.run(f"""
        import torch
        from PIL import Image
        from transformers import AutoModel, AutoProcessor, pipeline
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = processor(text={LABELS!r}, images=Image.open({str(image)!r}), return_tensors="pt", padding=True)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image[0].tolist()
        extractor = pipeline("image-feature-extraction", model={str(folder)!r}, trust_remote_code=True)
        result = [type(processor).__name__, logits, extractor({str(image)!r})[0]]
    """)
    assert kind == "CLIPProcessor"
    assert logits == pytest.approx(local_logits, abs=1e-5)
    assert features == pytest.approx(local_features, abs=1e-5)


def test_exported_folder_leaves_the_training_heads_out_and_loads_without_missing_keys(folders):
    model, folder = folders["a_clip"]
    keys = saved_keys(folder)
    assert not any(key.startswith(HEADS) for key in keys)
    assert all(key in keys for key in model.state_dict() if not key.startswith(HEADS))
    assert model.simclr_head is not None  # put back after saving
    loaded, info = AClipModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    heads = [value for key, value in loaded.state_dict().items() if key.startswith(HEADS)]
    assert heads and all(torch.isfinite(value.float()).all() for value in heads)  # initialised, not left empty
    assert loaded.simclr_head[0].weight.std() > 0


def test_export_training_heads_keeps_them_and_round_trips_exactly(folders):
    model, folder = folders["a_clip_heads"]
    assert {key.split(".")[0] + "." for key in saved_keys(folder)} >= set(HEADS)
    loaded = AClipModel.from_pretrained(folder)
    expected = model.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    assert all(torch.equal(value, expected[key]) for key, value in loaded.state_dict().items())


def test_continuing_from_a_folder_without_heads_says_they_start_fresh(folders, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_masked_vl.loading"):
        load_checked(AClipModel, str(folders["a_clip_heads"][1]), "--method a_clip")
        assert "fresh initialisation" not in caplog.text
        load_checked(AClipModel, str(folders["a_clip"][1]), "--method a_clip")
    assert "holds no simclr_head, byol_projector, byol_predictor" in caplog.text
    assert "--export_training_heads" in caplog.text


def test_export_training_heads_is_a_flag():
    assert parse_arguments(["--output_dir", "x", "--export_training_heads"])[1].export_training_heads is True
    assert parse_arguments(["--output_dir", "x"])[1].export_training_heads is False
