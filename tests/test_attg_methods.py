"""MAE / AttG-MAE / LiT as registered methods: guidance from a dataset column, random ablation maps, locked-image
tuning of vision checkpoints (this package's and transformers ViT / ViTMAE)."""

import contextlib
import io
import json
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import quick_run, tiny_vit_kwargs
from PIL import Image
from transformers import AutoModel, AutoModelForPreTraining, ViTConfig, ViTMAEConfig, ViTMAEModel, ViTModel

from hf_masked_vl import AttGMAEConfig, AttGMAEForPreTraining, AttGMAEModel, LiTModel
from hf_masked_vl.errors import run_cli
from hf_masked_vl.methods.attg_mae import AttGMAEMethod
from hf_masked_vl.training.run import main as run_pretraining
from hf_masked_vl.vision_towers import load_vision_tower

TINY_MAE = json.dumps(
    {
        "vision_config": {**tiny_vit_kwargs(), "position_embedding_type": "sincos"},
        "decoder_hidden_size": 32,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 4,
    }
)
TINY_LIT_TEXT = json.dumps(
    {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
    }
)
COMMON = [*quick_run(), "--logging_steps", "1"]


@pytest.fixture(scope="module")
def guided_shards(small_demo, tmp_path_factory):
    """The small demo's train shards with a `guidance` column: the true object map at the 4×4 patch grid."""
    folder = tmp_path_factory.mktemp("guided")
    files = []
    for index, path in enumerate(small_demo.train_files[:2]):
        table = datasets.load_dataset("parquet", data_files=[path], split="train")
        table = table.cast_column("segments", datasets.Image(decode=False))

        def add_guidance(record):
            objects = np.array(Image.open(io.BytesIO(record["segments"]["bytes"])).resize((4, 4), Image.BOX)) > 0
            return {"guidance": objects.astype(np.float32).tolist()}

        table = table.map(add_guidance)
        target = folder / f"train-{index:05d}.parquet"
        table.to_parquet(str(target))
        files.append(str(target))
    return files


@pytest.fixture(scope="module")
def mae_folder(small_demo, tmp_path_factory):
    output = tmp_path_factory.mktemp("mae") / "mae"
    result = run_pretraining(
        ["--method", "mae", "--output_dir", str(output), "--max_steps", "2", "--config_overrides", TINY_MAE, *COMMON]
    )
    assert result.exported == "online" and {"knn", "linear"} == set(result.results)
    return output


def test_mae_checkpoint_is_an_encoder_for_automodel_and_a_full_model_for_pretraining(mae_folder):
    config = json.loads((mae_folder / "config.json").read_text())
    assert config["model_type"] == "attg_mae" and config["guidance"] == "none"
    assert isinstance(AutoModel.from_pretrained(mae_folder), AttGMAEModel)
    assert isinstance(AutoModelForPreTraining.from_pretrained(mae_folder), AttGMAEForPreTraining)
    card = (mae_folder / "README.md").read_text()
    assert "k-NN top-1" in card and "linear-probe top-1" in card and "MAE" in card


def test_attg_mae_reads_the_guidance_column(guided_shards, tmp_path, capsys, monkeypatch):
    """The column's object maps reach the loss (the 4 × 4 map of a whole-image view is the column's map, 0 or 1,
    where random maps would be anything in [0, 1)), and τ follows the cosine schedule: 1.0 at the first of 3 steps,
    the mean 0.85 halfway, 0.7 at the last."""
    seen = []
    forward = AttGMAEForPreTraining.forward

    def recording_forward(self, pixel_values, *args, guidance=None, guidance_temperature=None, **kwargs):
        seen.append((guidance, guidance_temperature))
        return forward(
            self, pixel_values, *args, guidance=guidance, guidance_temperature=guidance_temperature, **kwargs
        )

    monkeypatch.setattr(AttGMAEForPreTraining, "forward", recording_forward)
    output = tmp_path / "attg"
    result = run_pretraining(
        [
            "--method", "attg_mae", "--output_dir", str(output), "--max_steps", "3",
            "--dataset_name", "parquet", "--data_files", *guided_shards,
            "--config_overrides", TINY_MAE, "--temperature_schedule", "cosine", *COMMON,
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "RESULT train_tflops=" in printed
    config = json.loads((output / "config.json").read_text())
    assert config["guidance"] == "map" and config["temperature_schedule"] == "cosine"
    assert result.train_tflops > 0
    assert [tau for _, tau in seen] == pytest.approx([1.0, 0.85, 0.7])
    for guidance, _ in seen:
        assert guidance.shape == (8, 4, 4) and set(guidance.unique().tolist()) == {0.0, 1.0}


def test_attg_mae_without_a_guidance_column_names_the_script(tmp_path, small_demo):
    with pytest.raises(ValueError, match="compute_guidance.py"):
        run_pretraining(
            [
                "--method",
                "attg_mae",
                "--output_dir",
                str(tmp_path),
                "--config_overrides",
                TINY_MAE,
                "--demo_num_train",
                "256",
            ]
        )


def test_random_guidance_ablation_draws_maps_in_the_workers():
    def generator(guidance: str):
        config = AttGMAEConfig(vision_config=tiny_vit_kwargs(), guidance=guidance)
        return AttGMAEMethod(None, None, None).mask_generator(SimpleNamespace(config=config))

    seeds = torch.tensor([3, 9])
    drawn = generator("random")(seeds)
    assert drawn.keep_indices.shape == (2, 4) and drawn.guidance.shape == (2, 4, 4)
    assert 0 <= drawn.guidance.min() and drawn.guidance.max() < 1
    again = generator("random")(seeds)
    assert torch.equal(drawn.guidance, again.guidance) and torch.equal(drawn.keep_indices, again.keep_indices)
    masks_only = generator("map")(seeds)
    assert masks_only.guidance is None and torch.equal(masks_only.keep_indices, drawn.keep_indices)


def test_mae_refuses_a_guidance_setting(tmp_path):
    with pytest.raises(ValueError, match="use --method attg_mae"):
        run_pretraining(["--method", "mae", "--output_dir", str(tmp_path), "--guidance", "map"])


@pytest.fixture(scope="module")
def lit_folder(mae_folder, tmp_path_factory):
    """LiT on the MAE checkpoint, 2 steps: (folder, run result, what the run printed)."""
    output = tmp_path_factory.mktemp("lit") / "lit"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = run_pretraining(
            [
                "--method", "lit", "--model_name_or_path", str(mae_folder), "--output_dir", str(output),
                "--max_steps", "2", "--text_config", TINY_LIT_TEXT, "--projection_dim", "16", *COMMON,
            ]
        )  # fmt: skip
    return output, result, printed.getvalue()


def test_lit_on_a_mae_checkpoint_gives_a_zero_shot_dual_encoder(mae_folder, lit_folder):
    output, result, printed = lit_folder
    assert "RESULT zero_shot_top1=" in printed and 0 <= result.zero_shot_top1 <= 1
    lit = LiTModel.from_pretrained(output)
    encoder = AttGMAEModel.from_pretrained(mae_folder)
    for key, value in encoder.vit.state_dict().items():  # the locked tower is the MAE encoder, untouched
        assert torch.equal(lit.vision_model.state_dict()[key], value), key
    assert {"tokenizer.json", "pipeline_zero_shot.py"} <= {p.name for p in output.iterdir()}


def test_lit_locks_the_tower_except_the_unlocked_blocks(mae_folder, tmp_path):
    from hf_masked_vl.methods.lit import LiTMethod
    from hf_masked_vl.training.run import parse_arguments

    method_class, model_args, data_args, config_args, training_args = parse_arguments(
        ["--method", "lit", "--model_name_or_path", str(mae_folder), "--output_dir", str(tmp_path),
         "--unlocked_vision_layers", "1", "--text_config", TINY_LIT_TEXT]
    )  # fmt: skip
    assert method_class is LiTMethod
    method = LiTMethod(model_args, data_args, training_args, {"unlocked_vision_layers": 1, "text_config": {}})
    model = method.build_model()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "vision_model.layers.1.attn.qkv.weight" in trainable and "vision_model.norm.weight" in trainable
    assert "vision_model.layers.0.attn.qkv.weight" not in trainable
    assert "vision_model.embeddings.cls_token" not in trainable
    assert "visual_projection.weight" in trainable and "text_projection.weight" in trainable


def test_layer_decay_on_a_locked_tower_is_refused_in_one_line(mae_folder, tmp_path, capsys):
    argv = ["--method", "lit", "--model_name_or_path", str(mae_folder), "--output_dir", str(tmp_path / "lit"),
            "--max_steps", "1", "--text_config", TINY_LIT_TEXT, "--layer_decay", "0.75", *COMMON]  # fmt: skip
    capsys.readouterr()
    assert run_cli(run_pretraining, argv) == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr and [line for line in stderr.splitlines() if line.startswith("error:")] == [
        "error: --layer_decay 0.75: the vision_model of this LiTModel is frozen, so no lr would change; leave it unset"
    ]


@pytest.mark.parametrize("kind", ["vit", "vit_mae"])
def test_transformers_vit_towers_convert_exactly(kind, tmp_path):
    torch.manual_seed(0)
    common = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64)  # fmt: skip
    if kind == "vit":
        model = ViTModel(ViTConfig(**common), add_pooling_layer=False).eval()
    else:
        model = ViTMAEModel(ViTMAEConfig(**common, mask_ratio=0.0)).eval()
        from hf_masked_vl.models.modeling_masked_vit import get_2d_sincos_pos_embed

        with torch.no_grad():  # transformers 5 leaves a fresh ViTMAE's fixed table at zero
            model.embeddings.position_embeddings.copy_(get_2d_sincos_pos_embed(32, 4, cls_token=True)[None])
    model.save_pretrained(tmp_path / kind)
    tower = load_vision_tower(str(tmp_path / kind)).model
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(
            pixel_values=pixels, **({"noise": torch.arange(16.0).expand(2, 16)} if kind == "vit_mae" else {})
        )
        ours = tower(pixels).last_hidden_state
    torch.testing.assert_close(ours, expected.last_hidden_state, atol=2e-5, rtol=1e-4)


def test_lit_folder_runs_both_pipelines_without_the_package(lit_folder, tmp_path, package_free_python):
    """Without the package, the folder's own code gives the stock and the ensemble pipeline the scores they give
    with it, label for label."""
    from transformers import pipeline

    output = lit_folder[0]
    image = tmp_path / "image.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    labels = ["red circle", "blue square", "green star"]
    local = [
        pipeline(task, model=str(output), trust_remote_code=True)(str(image), candidate_labels=labels)
        for task in ("zero-shot-image-classification", "zero-shot-image-classification-ensemble")
    ]
    remote = package_free_python.run(f"""
        from transformers import pipeline
        stock = pipeline("zero-shot-image-classification", model={str(output)!r}, trust_remote_code=True)
        assert type(stock.model).__name__ == "LiTModel", type(stock.model)
        ensemble = pipeline(model={str(output)!r}, trust_remote_code=True)
        assert type(ensemble).__name__ == "ZeroShotEnsemblePipeline", type(ensemble)
        result = [pipe({str(image)!r}, candidate_labels={labels!r}) for pipe in (stock, ensemble)]
    """)
    for expected, got in zip(local, remote):
        assert [r["label"] for r in got] == [r["label"] for r in expected]
        assert [r["score"] for r in got] == pytest.approx([r["score"] for r in expected], abs=1e-6)
