"""`MaskedVLTrainer`: a `transformers.Trainer` that orchestrates EMA models, frozen teachers and per-method inputs,
and accounts for where the time goes."""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..data.records import append_skipped_records
from ..errors import UsageError
from ..methods import Objective
from ..models.schedules import cosine_schedule
from .compile_stats import CompileStats
from .ema import EMA_WEIGHTS_NAME, EMACallback
from .flops import flop_counter
from .outputs import (
    RunRecord,
    checkpoint_problem,
    checkpoints_to_rotate,
    new_session_id,
    newest_complete_checkpoint,
    publish_folder,
    remove_path,
    write_manifest,
)

logger = logging.getLogger(__name__)

DATA_STATE_NAME = "data_state.json"


class _ObjectiveStepCallback(TrainerCallback):
    """Runs `objective.after_optimizer_step` once per optimizer step, before the EMA update."""

    def __init__(self, objective: Objective):
        self.objective = objective

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.objective.after_optimizer_step(model)


class _StreamEpochCallback(TrainerCallback):
    """After each optimizer step, sets `state.epoch` to the fraction of the stream read (`stream_epoch`): the
    Trainer's own figure for a stream counts steps against `max_steps` within a pass and jumps by one at each pass."""

    def __init__(self, stream_epoch: Callable[[], float | None]):
        self.stream_epoch = stream_epoch

    def on_step_end(self, args, state, control, **kwargs):
        epoch = self.stream_epoch()
        if epoch is not None:
            state.epoch = epoch


class WeightDecayScheduleCallback(TrainerCallback):
    """DINO's cosine weight-decay schedule: before each optimizer step, every parameter group that decays gets
    `cosine_schedule(step, max_steps, start, end)` (from `args.weight_decay` to `args.weight_decay_end`); groups
    without decay (biases, norms) keep 0."""

    def __init__(self, start: float, end: float):
        self.start, self.end = start, end

    def weight_decay_at(self, step: int, max_steps: int) -> float:
        return cosine_schedule(step, max_steps, self.start, self.end)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        value = self.weight_decay_at(state.global_step, state.max_steps)
        for group in optimizer.param_groups:
            if group["weight_decay"] > 0:
                group["weight_decay"] = value


class _EpochDataLoader(torch.utils.data.DataLoader):
    """A DataLoader that forwards `set_epoch` to its dataset (the Trainer calls it at every epoch)."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


class NonFiniteLossError(RuntimeError):
    """Training met a NaN or infinite loss."""


class _Timer:
    """Wall time spent inside a module's forward (forward pre/post hooks; synchronises CUDA for honest numbers)."""

    def __init__(self, module: nn.Module):
        self.seconds = 0.0
        self._start = None
        module.register_forward_pre_hook(self._before)
        module.register_forward_hook(self._after)

    def _sync(self, inputs) -> None:
        tensor = next((t for t in inputs if isinstance(t, torch.Tensor)), None)
        if tensor is not None and tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)

    def _before(self, module, inputs):
        self._sync(inputs)
        self._start = time.perf_counter()

    def _after(self, module, inputs, output):
        self._sync(inputs)
        self.seconds += time.perf_counter() - self._start


class MaskedVLTrainer(Trainer):
    """Trainer for the package's methods.

    Args:
        objective: builds the model inputs of a step from the collated batch (a method's `Objective`).
        teacher: a frozen module held *outside* the model: moved to the device, eval mode, no gradients, never
            saved nor optimised. Run under `no_grad` and autocast inside `objective.prepare`. With `--torch_compile`
            its `forward` is compiled too (with the same backend and mode; its timing hooks stay outside).
        ema_callback: an `EMACallback` (not yet initialised) when the method keeps an EMA model; the trainer copies
            the model into it after any SyncBatchNorm conversion.
        run_record: the output folder's run record (`training.outputs.RunRecord`, main process) when the run keeps
            one: it lists every checkpoint written, and only those are rotated and resumed from. Without it the
            trainer rotates only the checkpoints it wrote itself and resumes from any `checkpoint-N` folder.
        protocol_evaluation: `evaluate(model, ema_model or None) -> {metric: value}` (the package's protocols on the
            current weights, e.g. `{"knn_top1": 0.4, "top1": 0.4}`): what `evaluate` runs at the points of
            `--eval_strategy` (main process only; the other processes get the same metrics). None: the Trainer's own
            `evaluate`.
        records_per_epoch: the records of one pass over the training stream (all processes together), so that the
            logged epoch is the fraction of the stream read (`stream_epoch`); None when unknown.
        All other arguments are `transformers.Trainer`'s.

    Checkpoints are atomic: every process writes into `.checkpoint-N.tmp-<session>/checkpoint-N` (weights,
    optimizer, scheduler, RNG and trainer state, `data_state*.json`, EMA, tokenizer, processor); after a barrier the
    main process adds a manifest and renames the folder to `checkpoint-N`. `resume_from_checkpoint=True` takes the
    newest complete checkpoint and names those it skipped.

    The loss returned by the model is a per-batch mean, so the Trainer scales it for gradient accumulation
    (`loss_is_scaled_for_ga = False`). Logged besides the Trainer's own figures: every output field whose name ends
    in `_loss`, the EMA momentum, the running count of skipped input records, and throughput — images/s, achieved
    GFLOP/s (FLOPs of one step from `torch.utils.flop_counter`), and the shares of wall time spent waiting for data
    and in the teacher's forward. Training stops at the first non-finite loss with an error naming the step and the
    loss parts.

    `--torch_compile`: the Trainer (accelerate) compiles the model, so its forward and backward in every method; the
    frozen teacher's forward is compiled here. The EMA model's forward (method-specific paths such as A-CLIP's
    layer-by-layer CLS attention) and the EMA update (one `torch._foreach_lerp_` over all tensors) stay eager. Graph
    breaks are counted (`torch._dynamo` counters): logged as `graph_breaks` with the throughput figures and, with their
    reasons, when training ends.
    """

    loss_is_scaled_for_ga = False

    def __init__(
        self,
        *args,
        objective: Objective,
        teacher: nn.Module | None = None,
        ema_callback: EMACallback | None = None,
        run_record: RunRecord | None = None,
        protocol_evaluation: Callable[[nn.Module, nn.Module | None], dict[str, float]] | None = None,
        records_per_epoch: int | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if self.args.world_size > 1 and self.args.device.type in ("cuda", "xpu"):  # no CPU SyncBatchNorm kernel
            # BatchNorm heads (SimCLR, BYOL) see the global batch under DDP, as in the official code; done before
            # the EMA copy, the optimizer and the DDP wrapper exist
            nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.objective = objective
        self.teacher = None
        self._teacher_timer = None
        if teacher is not None:
            self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
            self._teacher_timer = _Timer(self.teacher)
        self._compile_baseline = CompileStats.now() if self.args.torch_compile else None
        if self.args.torch_compile and self.teacher is not None:
            backend = self.args.torch_compile_backend or "inductor"
            self.teacher.forward = torch.compile(
                self.teacher.forward, backend=backend, mode=self.args.torch_compile_mode
            )
        self.add_callback(_ObjectiveStepCallback(objective))
        self.protocol_evaluation = protocol_evaluation
        self.records_per_epoch = records_per_epoch
        self.add_callback(_StreamEpochCallback(self.stream_epoch))
        if getattr(self.args, "weight_decay_end", None) is not None:
            self.add_callback(WeightDecayScheduleCallback(self.args.weight_decay, self.args.weight_decay_end))
        self.ema_callback = ema_callback
        if ema_callback is not None:
            ema_callback.initialize(self.model)
            self.add_callback(ema_callback)
        self._loss_parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._skipped: list[torch.Tensor] = []
        self._skipped_records: list[dict] = []
        self.skipped_samples = 0
        # where the stream is: per DataLoader worker, the (epoch, records read) of the last example consumed
        self.stream_positions: dict[int, tuple[int, int]] = {}
        self.extra_checkpoint_files: list = []  # objects with save_pretrained (tokenizer, image processor)
        self.run_record = run_record
        self.session_id: str | None = None  # names the temporary checkpoint folders; the same on every process
        self._written_checkpoints: list[str] = []  # without a run record: what this trainer wrote, oldest first
        # throughput accounting
        self.flops_per_micro_step: int | None = None
        self._window = {"images": 0, "steps": 0, "data": 0.0, "teacher": 0.0, "start": None}
        self._last_step_end: float | None = None
        self._train_loader_keeps_workers = False  # persistent (not asked for) to roll into the next epochs
        self._kept_workers_iterated = False  # such a loader has started an epoch (its iterator drew a seed)
        self._train_loader: torch.utils.data.DataLoader | None = None  # the training DataLoader, while it may run

    # ---- data ----
    def get_train_dataloader(self):
        """Under distributed training a stream already split by node (`split_by_node`: each process reads its own
        shards, `datasets.distributed.split_dataset_by_node`) gets a plain per-process DataLoader: accelerate would
        otherwise dispatch or re-shard it (and a second split silently drops data). With workers, a batch that takes
        longer than `args.dataloader_timeout` seconds (`--dataloader_timeout`, 0: no limit) stops the run with
        torch's `DataLoader timed out after N seconds` instead of hanging on a stuck worker.

        A stream that can roll into its next epoch (`ImageTextStream.roll_epochs`) gets persistent workers that do
        so, as many examples ahead as the DataLoader keeps batches in flight: at an epoch boundary no worker
        restarts and no shuffle buffer refills while the step waits."""
        dataset = self.train_dataset
        rolls = self._roll_stream_epochs(dataset)
        persistent = self.args.dataloader_persistent_workers or rolls
        self._train_loader_keeps_workers = persistent and not self.args.dataloader_persistent_workers
        self._kept_workers_iterated = False
        if self.args.world_size <= 1 or not getattr(dataset, "split_by_node", False):
            chosen, self.args.dataloader_persistent_workers = self.args.dataloader_persistent_workers, persistent
            try:
                loader = super().get_train_dataloader()
            finally:
                self.args.dataloader_persistent_workers = chosen
        else:
            loader = _EpochDataLoader(
                dataset,
                batch_size=self._train_batch_size,
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
                persistent_workers=persistent,
                prefetch_factor=self.args.dataloader_prefetch_factor,
            )
        timeout = float(getattr(self.args, "dataloader_timeout", 0) or 0)
        iterated = getattr(loader, "base_dataloader", loader)  # accelerate's loaders wrap the DataLoader they iterate
        if timeout > 0 and iterated.num_workers > 0:  # torch allows a timeout only with workers
            iterated.timeout = int(timeout) if timeout.is_integer() else timeout  # read when an iteration starts
        self._train_loader = iterated
        return loader

    def _stop_train_workers(self) -> None:
        """Stop the persistent workers of the training DataLoader: they outlive every epoch, but not the training
        (a worker holds what the run had open when it started, such as the output folder's lock)."""
        loader, self._train_loader = self._train_loader, None
        if getattr(loader, "_iterator", None) is not None:  # where torch keeps a persistent workers' iterator
            loader._iterator._shutdown_workers()
            loader._iterator = None

    def _roll_stream_epochs(self, dataset) -> bool:
        """Whether `dataset` rolls into its next epochs in DataLoader workers (set up here when it can)."""
        if self.args.dataloader_num_workers < 1 or not callable(getattr(dataset, "roll_epochs", None)):
            return False
        batches_in_flight = self.args.dataloader_prefetch_factor or 2  # torch's default prefetch_factor
        dataset.roll_epochs(self._train_batch_size * batches_in_flight)
        return True

    def stream_epoch(self) -> float | None:
        """The passes over the training stream read so far, from where each DataLoader worker of this process is
        (`stream_positions`: (epoch, records read in it)): the workers' mean epoch plus the records they read in it
        over this process's share of `records_per_epoch`. Without `records_per_epoch` (a stream of unknown length)
        only the completed passes count; None before the first batch or for a dataset without positions."""
        positions = list(self.stream_positions.values())
        if not positions:
            return None
        epoch = sum(epoch for epoch, _ in positions) / len(positions)
        if self.records_per_epoch:
            epoch += sum(records for _, records in positions) * self.args.world_size / self.records_per_epoch
        return round(epoch, 6)

    # ---- evaluation during training ----
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """With `protocol_evaluation`: the package's protocols on the current weights (and the EMA's), returned and
        logged as `eval_<metric>` (TensorBoard: `eval/<metric>`), so that `--metric_for_best_model knn_top1` and
        `--load_best_model_at_end` choose among the checkpoints. Every model keeps its train / eval mode."""
        if self.protocol_evaluation is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        models = [model for model in (self.model, self.ema_model) if model is not None]
        modes = [model.training for model in models]
        metrics: list = [None]
        if self.is_world_process_zero():
            started = time.perf_counter()
            scores = self.protocol_evaluation(self.model, self.ema_model)
            metrics[0] = {f"{metric_key_prefix}_{name}": value for name, value in scores.items()}
            metrics[0][f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - started, 4)
        if self.args.world_size > 1:
            broadcast_object_list(metrics, from_process=0)
        for model, mode in zip(models, modes):
            model.train(mode)
        self.log(dict(metrics[0]))
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics[0])
        return metrics[0]

    def _load_best_model(self) -> None:
        """As the parent's, and the EMA of the best checkpoint too (the final evaluation compares both)."""
        super()._load_best_model()
        if self.ema_callback is not None:
            self.ema_callback.load(self.state.best_model_checkpoint)

    # ---- optimizer ----
    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """Weight decay on matrices and embeddings only (ndim >= 2), never on biases, norms (LayerNorm and the heads'
        BatchNorm), the logit scale, nor what a submodule lists in `no_weight_decay()` (CLS token, positions)."""
        excluded = set()
        for prefix, module in model.named_modules():
            if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
                excluded |= {f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay()}
        return [name for name, p in model.named_parameters() if p.ndim >= 2 and name not in excluded]

    def learning_rate_scales(self, model: nn.Module) -> dict[str, float]:
        """Per-parameter learning-rate multipliers that submodules declare with `learning_rate_scales()` (name →
        factor, relative to the submodule), e.g. MRE's relation-bias scalars."""
        scales = {}
        for prefix, module in model.named_modules():
            if callable(getattr(module, "learning_rate_scales", None)):
                for name, factor in module.learning_rate_scales().items():
                    scales[f"{prefix}.{name}" if prefix else name] = float(factor)
        return scales

    def learning_rate_multipliers(self, model: nn.Module) -> dict[str, float]:
        """The lr factors other than 1, by parameter name: a submodule's `learning_rate_scales()` times, with
        `args.layer_decay`, the layer-wise decay of `layer_decay_scales`."""
        scales = self.learning_rate_scales(model)
        layer_decay = getattr(self.args, "layer_decay", None)
        if layer_decay:
            layer_scales = layer_decay_scales(model, layer_decay)
            scales = {name: scales.get(name, 1.0) * layer_scales.get(name, 1.0) for name in scales | layer_scales}
        return {name: factor for name, factor in scales.items() if factor != 1.0}

    def create_optimizer(self, model=None):
        """As `Trainer.create_optimizer`, with one parameter group per (lr factor, weight decay) when
        `learning_rate_multipliers` gives factors other than 1."""
        opt_model = self.model if model is None else model
        multipliers = self.learning_rate_multipliers(opt_model)
        if self.optimizer is not None or not multipliers:
            return super().create_optimizer(model)
        decay_names = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, bool], dict] = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            key = (multipliers.get(name, 1.0), name in decay_names)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "lr": self.args.learning_rate * key[0],
                    "weight_decay": self.args.weight_decay if key[1] else 0.0,
                }
            groups[key]["params"].append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(list(groups.values()), **optimizer_kwargs)
        return self.optimizer

    # ---- training ----
    @property
    def ema_model(self) -> nn.Module | None:
        return self.ema_callback.ema_model if self.ema_callback is not None else None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """As `Trainer.train`; a resumed run also restores the EMA (`ema.safetensors`), the stream position and
        the count of skipped records (`data_state.json`), and warns about any state the checkpoint lacks.
        `resume_from_checkpoint=True` takes the newest complete checkpoint of the run (warning about every newer
        one skipped and why); a damaged checkpoint folder given by name is a `UsageError` naming it."""
        resume_from_checkpoint = self._agree_on_start(resume_from_checkpoint)
        if resume_from_checkpoint:
            self._restore_data_state(resume_from_checkpoint)
        if self.ema_callback is not None:
            self.ema_callback.resume_dir = resume_from_checkpoint or None
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:
            self._stop_train_workers()

    def _run_epoch(self, *args, **kwargs):
        """As the parent's, but a run resumed at or past `max_steps` (its last checkpoint written at the final step,
        then killed before the final folder was complete; or resumed with a lower `--max_steps`) trains no further
        step: a stream has no length, so the parent would start another epoch and train one step too many."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        if self._kept_workers_iterated:
            # a fresh DataLoader iterator draws its workers' base seed from the default generator, a persistent one
            # only once: draw it here, so the main process's random stream stays that of workers started each epoch
            torch.empty((), dtype=torch.int64).random_()
        self._kept_workers_iterated = self._train_loader_keeps_workers
        return super()._run_epoch(*args, **kwargs)

    def _agree_on_start(self, requested: str | bool | None) -> str | None:
        """The main process picks the session id and the checkpoint to resume from (or the error to raise); every
        process gets the same answer."""
        answer: list = [None, None, None]
        if self.is_world_process_zero():
            session = self.run_record.session if self.run_record is not None else new_session_id()
            try:
                answer = [session, self._checkpoint_to_resume(requested), None]
            except UsageError as error:
                answer = [session, None, str(error)]
        if self.args.world_size > 1:
            broadcast_object_list(answer, from_process=0)
        self.session_id, folder, error = answer
        if error is not None:
            raise UsageError(error)
        return folder

    def _own_checkpoints(self) -> list[str]:
        """The `checkpoint-N` names this run wrote, oldest first."""
        return list(self.run_record.checkpoints) if self.run_record is not None else list(self._written_checkpoints)

    def _checkpoint_to_resume(self, requested: str | bool | None) -> str | None:
        output_dir = self.args.output_dir
        if requested is True:
            if self.run_record is not None:
                names = self.run_record.checkpoints
            else:
                names = [path.name for path in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*") if path.is_dir()]
            names = [name for name in names if os.path.isdir(os.path.join(output_dir, name))]
            if not names:
                raise UsageError(f"no checkpoint found in output_dir={output_dir!r} to resume from")
            chosen, skipped = newest_complete_checkpoint(output_dir, names)
            if chosen is None:
                raise UsageError(
                    f"no complete checkpoint found in output_dir={output_dir!r} to resume from: " + "; ".join(skipped)
                )
            if skipped:
                logger.warning("resuming from %s; skipped the newer %s", chosen.name, "; ".join(skipped))
            return str(chosen)
        if requested:
            problem = checkpoint_problem(requested, strict=False)
            if problem is not None:
                raise UsageError(f"--resume_from_checkpoint {requested}: {problem}")
            return str(requested)
        return None

    def _restore_data_state(self, folder: str) -> None:
        missing = [
            what
            for what, pattern in (
                ("trainer state (trainer_state.json: training would restart at step 0)", TRAINER_STATE_NAME),
                ("optimizer state (optimizer.pt)", "optimizer.pt"),
                ("learning-rate scheduler state (scheduler.pt)", "scheduler.pt"),
                ("random number generator state (rng_state*.pth)", "rng_state*.pth"),
                ("stream position (data_state*.json)", "data_state*.json"),
            )
            if not glob.glob(os.path.join(folder, pattern))
        ]
        if self.ema_callback is not None and not os.path.isfile(os.path.join(folder, EMA_WEIGHTS_NAME)):
            missing.append(f"EMA weights ({EMA_WEIGHTS_NAME})")
        if missing:
            logger.warning(
                "resuming from %s without its %s: that state starts afresh, so the run will differ from an "
                "uninterrupted one",
                folder,
                "; ".join(missing),
            )
        name = DATA_STATE_NAME if self.args.world_size <= 1 else f"data_state-rank{self.args.process_index}.json"
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
        self.skipped_samples = int(state.get("skipped_samples", 0))
        self._truncate_skipped_records(int(state.get("skipped_records_written", 0)))
        positions = {int(worker): tuple(position) for worker, position in state.get("positions", {}).items()}
        self.stream_positions = dict(positions)
        resume = getattr(self.train_dataset, "resume_from", None)
        if positions and resume is not None:
            resume(positions)
            self.args.ignore_data_skip = True  # the stream is positioned exactly; no batches to replay
        elif positions:
            logger.warning("the training dataset cannot be positioned: the Trainer replays batches instead")

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, plus what makes it resumable exactly and usable on its own (the stream position
        and skipped-record count in `data_state.json`, the EMA, the tokenizer and image processor), written under a
        temporary name and renamed to `checkpoint-N` once complete. Only this run's checkpoints are rotated."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_parent = os.path.join(run_dir, f".{name}.tmp-{self.session_id}")
        staged = os.path.join(staging_parent, name)
        # the parent class writes (and rotates) inside the staging parent, where this checkpoint is alone
        self._get_output_dir = lambda trial=None: staging_parent
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
        self._point_at_best_checkpoint(run_dir, staged)
        self._save_resume_state(staged)
        self._publish_checkpoint(staged, run_dir)

    def _point_at_best_checkpoint(self, run_dir: str, staged: str) -> None:
        """The parent class looked for the best checkpoint in the staging folder: point at its final place."""
        best_step = self.state.best_global_step
        if not best_step:
            return
        best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
        if (best_step == self.state.global_step or os.path.isdir(best)) and self.state.best_model_checkpoint != best:
            self.state.best_model_checkpoint = best
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))

    def _save_resume_state(self, folder: str) -> None:
        """Every process writes where its own stream is; the main process also the EMA, tokenizer and processor."""
        self._flush_skipped(all_processes=True)
        name = DATA_STATE_NAME if self.args.world_size <= 1 else f"data_state-rank{self.args.process_index}.json"
        os.makedirs(folder, exist_ok=True)
        state = {
            "global_step": self.state.global_step,
            "skipped_samples": self.skipped_samples,
            "skipped_records_written": _count_lines(self.skipped_records_path),
            "positions": {str(worker): list(position) for worker, position in sorted(self.stream_positions.items())},
            "world_size": self.args.world_size,
            "dataloader_num_workers": self.args.dataloader_num_workers,
        }
        with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=1)
        if self.args.should_save:
            if self.ema_callback is not None:
                self.ema_callback.save(folder)
            for item in self.extra_checkpoint_files:
                item.save_pretrained(folder)

    def _publish_checkpoint(self, staged: str, run_dir: str) -> None:
        """Once every process has written its part: the manifest, the record, the rename into place, rotation."""
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            name = os.path.basename(staged)
            write_manifest(staged)
            if self.run_record is not None:  # listed before the rename: a kill never leaves it unlisted
                self.run_record.add_checkpoint(name)
                self.run_record.save()
            else:
                self._written_checkpoints = [listed for listed in self._written_checkpoints if listed != name]
                self._written_checkpoints.append(name)
            publish_folder(staged, os.path.join(run_dir, name))
            os.rmdir(os.path.dirname(staged))
            self._rotate_checkpoints(run_dir, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()

    def _rotate_checkpoints(self, run_dir: str, limit: int | None, keep_newest: bool = True) -> None:
        """`--save_total_limit` over this run's checkpoints only, keeping the best and (`keep_newest`) the newest."""
        names = [name for name in self._own_checkpoints() if os.path.isdir(os.path.join(run_dir, name))]
        protected = set(names[-1:] if keep_newest else [])
        best = self.state.best_model_checkpoint
        if best is not None and os.path.dirname(os.path.abspath(best)) == os.path.abspath(run_dir):
            protected.add(os.path.basename(best))
        removed = checkpoints_to_rotate(names, limit, protected)
        for name in removed:
            logger.info("deleting older checkpoint %s (--save_total_limit %s)", name, limit)
            remove_path(Path(run_dir) / name)
        if removed and self.run_record is not None:
            self.run_record.checkpoints = [name for name in self.run_record.checkpoints if name not in removed]
            self.run_record.save()
        elif removed:
            self._written_checkpoints = [name for name in self._written_checkpoints if name not in removed]

    def _finalize_training(self, trial, *args, **kwargs):
        """As the parent's, whose `save_total_limit == 1` clean-up (keep only the best checkpoint) would delete every
        `checkpoint-*` folder of the output folder: here it covers this run's checkpoints only. With
        `--torch_compile`, logs what dynamo compiled and every graph break's reason."""
        if self._compile_baseline is not None:
            logger.info("torch.compile during training: %s", self.compile_stats)
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            output = super()._finalize_training(trial, *args, **kwargs)
        finally:
            self.args.save_total_limit = limit
        if limit == 1 and self.state.best_model_checkpoint is not None and self.args.should_save:
            self._rotate_checkpoints(self._get_output_dir(trial=trial), limit, keep_newest=False)
        return output

    def _truncate_skipped_records(self, lines: int) -> None:
        """Keep the first `lines` records of `skipped.jsonl` (those written up to the resumed checkpoint): the
        records after it will be read, and skipped, again."""
        path = self.skipped_records_path
        if not os.path.isfile(path):
            return
        with open(path, encoding="utf-8") as handle:
            kept = [line for _, line in zip(range(lines), handle)]
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(kept)

    def _track_position(self, inputs: dict) -> None:
        epochs, records = inputs.pop("stream_epoch", None), inputs.pop("stream_records", None)
        workers = inputs.pop("stream_worker", None)
        if epochs is None or records is None:
            return
        workers = workers.tolist() if workers is not None else [0] * len(epochs)
        for worker, epoch, count in zip(workers, epochs.tolist(), records.tolist()):
            if (epoch, count) > self.stream_positions.get(worker, (-1, -1)):
                self.stream_positions[worker] = (epoch, count)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """As the Trainer's, timed: the wait for the next batches is the data-loading share of the step time."""
        start = time.perf_counter()
        if self._window["start"] is None:
            self._window["start"] = start
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._window["data"] += time.perf_counter() - start
        return batches

    def training_step(self, model, inputs, num_items_in_batch=None):
        window = self._window
        seeds = inputs.get("sample_seeds", inputs.get("pixel_values"))  # one per image, whatever its views
        if seeds is not None:
            window["images"] += seeds.shape[0]
        if self.flops_per_micro_step is None:
            with flop_counter() as counter:
                loss = super().training_step(model, inputs, num_items_in_batch)
            self.flops_per_micro_step = counter.get_total_flops()
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        window["steps"] += 1
        self._last_step_end = time.perf_counter()
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._track_position(inputs)
        records = inputs.pop("skipped_records", None)
        if records:
            self._skipped_records.extend(records)
        skipped = inputs.pop("num_skipped", None)
        if skipped is not None:
            self._skipped.append(skipped.detach().sum())
        self.objective.step, self.objective.max_steps = self.state.global_step, max(self.state.max_steps, 1)
        with torch.no_grad(), self.accelerator.autocast():
            model_inputs = self.objective.prepare(inputs, model, self.ema_model, self.teacher)
        outputs = model(**model_inputs)
        parts = {
            name: value
            for name, value in outputs.items()
            if name.endswith(("_loss", "_entropy")) and value is not None  # loss parts and collapse monitors
        }
        for name, value in parts.items():
            self._loss_parts[name].append(value.detach().float())
        if not torch.isfinite(outputs.loss.detach()).all():
            described = ", ".join(f"{name}={value.item():.4g}" for name, value in parts.items()) or "no parts"
            raise NonFiniteLossError(
                f"non-finite loss {outputs.loss.item()} at step {self.state.global_step + 1} ({described}); "
                "training stopped before the model was updated with it. Lower the learning rate, check the "
                "configuration (temperatures, loss weights) and the inputs."
            )
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            for name, values in self._loss_parts.items():
                if values:
                    logs[name] = round(torch.stack(values).mean().item(), 4)
            self._loss_parts.clear()
            self._flush_skipped(all_processes=True)
            logs["skipped_samples"] = self.skipped_samples
            if self.ema_callback is not None:
                logs["ema_momentum"] = round(self.ema_callback.current_momentum, 6)
            logs.update(self._throughput())
        super().log(logs, *args, **kwargs)

    @property
    def skipped_records_path(self) -> str:
        """`OUTPUT_DIR/skipped.jsonl`: one line per skipped input record (reason, where, identifiers); other
        processes of a distributed run write `skipped-rank<R>.jsonl`."""
        rank = self.args.process_index
        return os.path.join(self.args.output_dir, "skipped.jsonl" if rank == 0 else f"skipped-rank{rank}.jsonl")

    def _flush_skipped(self, all_processes: bool = False) -> None:
        """Add the skipped records seen since the last flush to the count and to `skipped.jsonl`; `all_processes`
        sums the counts over the processes (a collective call: every process must make it)."""
        if self._skipped_records:
            append_skipped_records(self.skipped_records_path, self._skipped_records)
            self._skipped_records = []
        local = torch.stack(self._skipped).sum() if self._skipped else torch.zeros((), dtype=torch.long)
        self._skipped.clear()
        if all_processes and self.args.world_size > 1:
            local = self.accelerator.reduce(local.to(self.args.device), reduction="sum").cpu()
        self.skipped_samples += int(local)

    def finalize_counts(self) -> int:
        """The exact number of skipped input records so far, over all processes (also those since the last log).
        Every process must call it."""
        self._flush_skipped(all_processes=True)
        return self.skipped_samples

    def _throughput(self) -> dict[str, float]:
        window = self._window
        if window["start"] is None or self._last_step_end is None or window["steps"] == 0:
            return {}
        elapsed = max(self._last_step_end - window["start"], 1e-9)
        teacher = self._teacher_timer.seconds if self._teacher_timer is not None else 0.0
        figures = {
            "images_per_second": round(window["images"] / elapsed, 2),
            "data_wait_share": round(window["data"] / elapsed, 4),
        }
        if self._teacher_timer is not None:
            figures["teacher_share"] = round((teacher - window["teacher"]) / elapsed, 4)
        if self.flops_per_micro_step:
            figures["achieved_gflops_per_s"] = round(self.flops_per_micro_step * window["steps"] / elapsed / 1e9, 2)
        if self._compile_baseline is not None:
            figures["graph_breaks"] = self.compile_stats.graph_break_count
        self._window = {"images": 0, "steps": 0, "data": 0.0, "teacher": teacher, "start": self._last_step_end}
        return figures

    @property
    def compile_stats(self) -> CompileStats | None:
        """What `torch.compile` did since this trainer was built (graphs, graph breaks with reasons); None without
        `--torch_compile`."""
        return None if self._compile_baseline is None else CompileStats.now() - self._compile_baseline

    @property
    def flops_per_optimizer_step(self) -> float:
        if self.flops_per_micro_step is None:
            return math.nan
        return float(self.flops_per_micro_step * self.args.gradient_accumulation_steps)


def _count_lines(path: str) -> int:
    if not os.path.isfile(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


def layer_decay_scales(model: nn.Module, layer_decay: float) -> dict[str, float]:
    """Layer-wise lr decay: decay^(top − id) for each trainable parameter of the one submodule that declares its layer
    ids (`layer_id(name)` and `num_layers_for_decay()`, as `no_weight_decay()` is declared), by full parameter name;
    parameters outside it keep their lr. A `UsageError` when the decay would change nothing: no such submodule,
    several (which one decays is ambiguous), or one whose parameters are all frozen (LiT's locked tower)."""
    flag, kind = f"--layer_decay {layer_decay}", type(model).__name__
    towers = [
        (prefix, module) for prefix, module in model.named_modules() if callable(getattr(module, "layer_id", None))
    ]
    if not towers:
        raise UsageError(f"{flag}: a {kind} declares no layer ids (no submodule with layer_id()); leave it unset")
    if len(towers) > 1:
        names = ", ".join(prefix or "the model itself" for prefix, _ in towers)
        raise UsageError(f"{flag}: a {kind} has several towers with layer ids ({names}); which one decays is ambiguous")
    prefix, tower = towers[0]
    top = tower.num_layers_for_decay()
    scales = {
        f"{prefix}.{name}" if prefix else name: layer_decay ** (top - tower.layer_id(name))
        for name, parameter in tower.named_parameters()
        if parameter.requires_grad
    }
    if not scales:
        raise UsageError(
            f"{flag}: the {prefix or kind} of this {kind} is frozen, so no lr would change; leave it unset"
        )
    return scales


__all__ = [
    "DATA_STATE_NAME",
    "MaskedVLTrainer",
    "NonFiniteLossError",
    "WeightDecayScheduleCallback",
    "layer_decay_scales",
]
