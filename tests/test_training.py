"""End-to-end training through `run_pretraining`'s code path on the small demo: EMA, GA, save/resume, teacher."""

import json
import shutil

import pytest
import torch
from conftest import quick_run, tiny_aclip_config
from safetensors.torch import load_file

from hf_masked_vl import AClipModel
from hf_masked_vl.data.streaming import ImageTextCollator, ImageTextStream, load_stream
from hf_masked_vl.data.views import AClipViews
from hf_masked_vl.methods.a_clip import AClipObjective
from hf_masked_vl.training.arguments import PretrainingArguments
from hf_masked_vl.training.ema import EMACallback, ema_momentum_at
from hf_masked_vl.training.run import main as run_pretraining
from hf_masked_vl.training.trainer import MaskedVLTrainer

TINY_OVERRIDES = json.dumps(
    {
        "vision_config": {
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
        },
        "text_config": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 16,
        },
        "projection_dim": 32,
        "simclr_hidden_dim": 64,
        "simclr_output_dim": 32,
        "byol_hidden_dim": 64,
        "byol_output_dim": 32,
    }
)


def make_trainer(small_demo, tokenizer, output_dir, **arguments):
    config = tiny_aclip_config()
    model = AClipModel(config)
    stream = ImageTextStream(load_stream("parquet", small_demo.train_files), AClipViews(32), shuffle_buffer=64)
    args = PretrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=8,
        logging_steps=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
        report_to="none",
        **arguments,
    )
    return MaskedVLTrainer(
        model=model,
        args=args,
        train_dataset=stream,
        objective=AClipObjective(config),
        data_collator=ImageTextCollator(tokenizer, 16),
        ema_callback=EMACallback(momentum=0.996),
    )


class CountingTeacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 3)


def test_one_ema_update_per_optimizer_step_with_accumulation(small_demo, tokenizer, tmp_path):
    trainer = make_trainer(
        small_demo, tokenizer, tmp_path, max_steps=3, gradient_accumulation_steps=2, save_strategy="no"
    )
    updates = []
    original = trainer.ema_callback.update
    trainer.ema_callback.update = lambda model, momentum: (
        updates.append(momentum),
        original(model, momentum),
    )
    trainer.train()
    assert trainer.state.global_step == 3
    assert updates == pytest.approx([ema_momentum_at(step, 3, 0.996) for step in (1, 2, 3)])
    assert 0 <= trainer.model.logit_scale.item() <= trainer.model.config.logit_scale_max


def test_logs_every_loss_part_throughput_and_the_ema_momentum(small_demo, tokenizer, tmp_path):
    trainer = make_trainer(small_demo, tokenizer, tmp_path, max_steps=2, save_strategy="no")
    trainer.train()
    logged = trainer.state.log_history[0]
    for key in (
        "clip_loss",
        "simclr_loss",
        "byol_loss",
        "ema_momentum",
        "skipped_samples",
        "images_per_second",
        "achieved_gflops_per_s",
        "data_wait_share",
    ):
        assert key in logged, key
    assert logged["images_per_second"] > 0 and 0 <= logged["data_wait_share"] < 1
    assert trainer.flops_per_micro_step > 0


def test_aclip_ema_averages_the_official_set_and_shares_the_rest(small_demo, tokenizer, tmp_path):
    from hf_masked_vl.methods import Built
    from hf_masked_vl.methods.a_clip import AClipMethod

    trainer = make_trainer(small_demo, tokenizer, tmp_path, max_steps=2, save_strategy="no", learning_rate=1e-2)
    trainer.ema_callback.averaged = AClipMethod.ema_averaged(None, Built(trainer.model))
    trainer.ema_callback._pairs = None
    trainer.train()
    online, ema = trainer.model.state_dict(), trainer.ema_model.state_dict()
    shared = [
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.weight",
        "logit_scale",
    ]
    for key in shared:
        assert torch.equal(ema[key], online[key]), key
    averaged = [
        "vision_model.layers.0.attn.qkv.weight",
        "text_model.encoder.layers.0.mlp.fc1.weight",
        "visual_projection.weight",
        "text_projection.weight",
        "byol_projector.0.weight",
    ]
    for key in averaged:
        assert not torch.equal(ema[key], online[key]), key


def test_non_finite_loss_stops_training_with_the_step_and_the_parts(small_demo, tokenizer, tmp_path):
    from hf_masked_vl.training.trainer import NonFiniteLossError

    trainer = make_trainer(small_demo, tokenizer, tmp_path, max_steps=3, save_strategy="no")
    trainer.model.config.simclr_temperature = 0.0  # bypasses validation on purpose
    with pytest.raises(NonFiniteLossError, match="step 1.*simclr_loss"):
        trainer.train()


def test_no_weight_decay_on_cls_token_and_positions(small_demo, tokenizer, tmp_path):
    trainer = make_trainer(small_demo, tokenizer, tmp_path, max_steps=1)
    decayed = set(trainer.get_decay_parameter_names(trainer.model))
    assert "vision_model.embeddings.cls_token" not in decayed
    assert "vision_model.embeddings.position_embedding" not in decayed
    assert "vision_model.layers.0.attn.qkv.weight" in decayed


def test_teacher_is_frozen_outside_model_and_optimizer(small_demo, tokenizer, tmp_path):
    teacher = CountingTeacher()
    trainer = make_trainer(small_demo, tokenizer, tmp_path, max_steps=1, save_strategy="no")
    trainer2 = MaskedVLTrainer(
        model=trainer.model,
        args=trainer.args,
        train_dataset=trainer.train_dataset,
        data_collator=trainer.data_collator,
        objective=trainer.objective,
        teacher=teacher,
        ema_callback=EMACallback(),
    )
    trainer2.train()
    assert trainer2.teacher is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    optimized = {id(p) for group in trainer2.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert not any(key.startswith("teacher") for key in trainer2.model.state_dict())


def test_checkpoint_holds_ema_and_resume_restores_it(small_demo, tokenizer, tmp_path):
    full = tmp_path / "full"
    trainer = make_trainer(small_demo, tokenizer, full, max_steps=4, save_steps=2, seed=3)
    trainer.train()
    checkpoint = full / "checkpoint-2"
    saved = load_file(str(checkpoint / "ema.safetensors"))
    online = load_file(str(checkpoint / "model.safetensors"))
    assert saved.keys() == online.keys()
    assert not torch.equal(saved["visual_projection.weight"], online["visual_projection.weight"])

    resumed_dir = tmp_path / "resumed"
    shutil.copytree(checkpoint, resumed_dir / "checkpoint-2")
    resumed = make_trainer(small_demo, tokenizer, resumed_dir, max_steps=4, save_steps=2, seed=3)
    restored_at_start = {}
    original_load = resumed.ema_callback.load

    def load_and_record(folder):
        original_load(folder)
        restored_at_start.update({k: v.clone() for k, v in resumed.ema_model.state_dict().items()})

    resumed.ema_callback.load = load_and_record
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    for key, value in saved.items():
        assert torch.equal(restored_at_start[key].cpu(), value)
    final_full = load_file(str(full / "checkpoint-4" / "ema.safetensors"))
    final_resumed = load_file(str(resumed_dir / "checkpoint-4" / "ema.safetensors"))
    # the stream is positioned exactly (data_state.json): the resumed run is the uninterrupted one, bit for bit
    for key, value in final_full.items():
        assert torch.equal(final_resumed[key], value), key


def test_resume_without_checkpoint_is_a_clear_error(small_demo, tokenizer, tmp_path):
    trainer = make_trainer(small_demo, tokenizer, tmp_path / "empty", max_steps=1)
    with pytest.raises(ValueError, match="no checkpoint found"):
        trainer.train(resume_from_checkpoint=True)


def record_keep_indices(monkeypatch) -> tuple[list, list]:
    """Lists filled during training: the collated batch's `keep_indices` and those the model's forward receives."""
    collated, seen = [], []
    compute_loss, forward = MaskedVLTrainer.compute_loss, AClipModel.forward

    def recording_compute_loss(self, model, inputs, *args, **kwargs):
        collated.append(inputs.get("keep_indices"))
        return compute_loss(self, model, inputs, *args, **kwargs)

    def recording_forward(self, *args, keep_indices=None, **kwargs):
        if kwargs.get("return_loss"):  # a training step, not an evaluation
            seen.append(keep_indices)
        return forward(self, *args, keep_indices=keep_indices, **kwargs)

    monkeypatch.setattr(MaskedVLTrainer, "compute_loss", recording_compute_loss)
    monkeypatch.setattr(AClipModel, "forward", recording_forward)
    return collated, seen


@pytest.mark.parametrize("mask_mode", ["attentive", "random", "none"])
def test_run_pretraining_main_job_writes_a_complete_folder(small_demo, tmp_path, mask_mode, capsys, monkeypatch):
    overrides = json.loads(TINY_OVERRIDES)
    overrides["mask_mode"] = mask_mode
    output = tmp_path / mask_mode
    collated, seen = record_keep_indices(monkeypatch)
    result = run_pretraining(
        [
            "--output_dir", str(output), "--max_steps", "3", "--config_overrides", json.dumps(overrides),
            *quick_run(save=True), "--logging_steps", "1", "--save_steps", "3", "--report_to", "tensorboard",
        ]
    )  # fmt: skip
    # the mode decides the masks: attentive ones from the EMA in the objective (3 of 4 groups of 2 × 2 patches per
    # online view), random ones drawn by the collator and passed on as they are, none at all
    assert len(collated) == len(seen) == 3
    for batch_keep, model_keep in zip(collated, seen):
        if mask_mode == "attentive":
            assert batch_keep is None and model_keep.shape == (8, 2, 12)
        elif mask_mode == "random":
            assert batch_keep.shape == (8, 2, 12) and torch.equal(model_keep, batch_keep)
        else:
            assert batch_keep is None and model_keep is None
    printed = capsys.readouterr().out
    assert "RESULT zero_shot_top1=" in printed and "RESULT chance=0.0417" in printed
    assert 0.0 <= result.zero_shot_top1 <= 1.0
    names = {p.name for p in output.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
        "README.md",
        "modeling_aclip.py",
        "pipeline_zero_shot.py",
        "processor_config.json",
    } <= names
    assert json.loads((output / "config.json").read_text())["mask_mode"] == mask_mode
    exported, resumable = load_file(output / "model.safetensors"), load_file(output / "checkpoint-3/model.safetensors")
    assert not any(key.startswith(("simclr_head.", "byol_")) for key in exported)  # training-only heads left out
    assert any(key.startswith("simclr_head.") for key in resumable)  # a checkpoint keeps them to resume
    assert (output / "checkpoint-3" / "ema.safetensors").is_file()
    events = list((output / "runs").rglob("events.out.tfevents.*"))  # TensorBoard by default
    assert events and events[0].stat().st_size > 0
    card = (output / "README.md").read_text()
    assert "zero-shot top-1" in card and f"{result.zero_shot_top1:.4f}"[:-1] in card


def test_layer_wise_lr_decay_and_no_decay_on_vectors(small_demo, tokenizer, tmp_path):
    trainer = make_trainer(
        small_demo, tokenizer, tmp_path, max_steps=1, layer_decay=0.5, learning_rate=1e-3, weight_decay=0.1
    )
    optimizer = trainer.create_optimizer()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    model = trainer.model
    depth = model.config.vision_config.num_hidden_layers  # 2: embeddings 0.5^3, block 0 0.5^2, block 1 0.5
    assert lr_of[id(model.vision_model.embeddings.cls_token)] == pytest.approx(1e-3 * 0.5 ** (depth + 1))
    assert lr_of[id(model.vision_model.layers[0].attn.qkv.weight)] == pytest.approx(1e-3 * 0.5**depth)
    assert lr_of[id(model.vision_model.layers[1].mlp.fc1.weight)] == pytest.approx(1e-3 * 0.5)
    assert lr_of[id(model.visual_projection.weight)] == pytest.approx(1e-3)
    assert lr_of[id(model.text_projection.weight)] == pytest.approx(1e-3)
    assert decay_of[id(model.vision_model.layers[0].attn.qkv.weight)] == 0.1
    assert decay_of[id(model.vision_model.layers[0].attn.proj.bias)] == 0.0
    assert decay_of[id(model.simclr_head[1].weight)] == 0.0  # BatchNorm: no decay
    assert decay_of[id(model.logit_scale)] == 0.0
    assert id(model.vision_model.embeddings.patch_embed.proj.weight) not in lr_of  # frozen


# ---------------------------------------------------------------- which weights the final folder holds


def scored(ema_top1: float, online_top1: float) -> dict:
    from hf_masked_vl.evaluation import EvaluationResult

    def result(top1: float) -> EvaluationResult:
        return EvaluationResult("knn", top1, 0.25, 4, 8, 8, "demo")

    return {"ema": {"knn": result(ema_top1)}, "online": {"knn": result(online_top1)}}


def ema_holding(initial_weight: float) -> EMACallback:
    ema = EMACallback()
    ema.initial_weight = initial_weight
    return ema


def test_choose_export_takes_the_better_scored_weights_unless_told():
    from hf_masked_vl.training.run import choose_export

    ema = ema_holding(0.5)
    assert choose_export("auto", scored(0.6, 0.4), "knn", ema)[0] == "ema"
    assert choose_export("auto", scored(0.4, 0.6), "knn", ema)[0] == "online"
    assert choose_export("auto", scored(0.5, 0.5), "knn", ema)[0] == "ema"  # a tie keeps the average
    chosen, why = choose_export("auto", scored(0.6, 0.4), "knn", ema)
    assert why == "knn top-1 0.6000 (EMA) vs 0.4000 (online)"
    assert choose_export("online", scored(0.9, 0.1), "knn", ema) == ("online", "--export_weights online")
    assert choose_export("ema", scored(0.1, 0.9), "knn", ema) == ("ema", "--export_weights ema")
    # without scores: the EMA once its initial weights are averaged away (at most 1%), else the online weights
    assert choose_export("auto", {}, None, ema_holding(0.01))[0] == "ema"
    assert choose_export("auto", {}, None, ema_holding(0.02))[0] == "online"
    assert choose_export("ema", {}, None, None) == ("online", "the method keeps no EMA")


@pytest.mark.parametrize("weights", ["ema", "online"])
def test_export_weights_flag_picks_the_final_folders_weights(weights, tmp_path, capsys):
    """The final folder holds exactly the chosen weight set of the last step (saved beside it in checkpoint-2)."""
    from test_pinned_losses import BATCH_FILE

    output = tmp_path / weights
    run_pretraining(
        [
            "--output_dir", str(output), "--export_weights", weights, "--config_overrides", TINY_OVERRIDES,
            "--dataset_name", "parquet", "--data_files", str(BATCH_FILE), "--max_steps", "2",
            *quick_run(batch_size=2, save=True), "--save_steps", "2", "--learning_rate", "1e-2",
        ]
    )  # fmt: skip
    assert f"RESULT exported_weights={weights}" in capsys.readouterr().out
    final = load_file(str(output / "model.safetensors"))
    checkpoint = output / "checkpoint-2"
    chosen = load_file(str(checkpoint / ("ema.safetensors" if weights == "ema" else "model.safetensors")))
    other = load_file(str(checkpoint / ("model.safetensors" if weights == "ema" else "ema.safetensors")))
    training_heads = ("simclr_head.", "byol_projector.", "byol_predictor.")  # kept in checkpoints, not exported
    assert set(final) == {key for key in chosen if not key.startswith(training_heads)}
    assert all(torch.equal(final[key], chosen[key]) for key in final)
    assert not torch.equal(final["visual_projection.weight"], other["visual_projection.weight"])
    assert (
        f"Exported weights: {'EMA' if weights == 'ema' else 'online'} (--export_weights {weights})"
        in (output / "README.md").read_text()
    )
