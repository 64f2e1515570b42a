"""More than one process. The global-batch losses are checked exactly with two ranks simulated in one process
(`torch.distributed` mocked: rank, world size and the differentiable all-gather), and one real `accelerate launch
--num_processes 2` on the CPU (gloo) trains A-CLIP (EMA, gathered contrastive losses, BatchNorm heads) with each
process reading its own shards, checkpoints every rank's state and ends cleanly. Every process ends the process
group it started, so none aborts at exit."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.distributed.nn.functional as differentiable
import torch.nn.functional as F
from datasets.distributed import split_dataset_by_node
from test_training import TINY_OVERRIDES

import hf_masked_vl.training.run as run
from hf_masked_vl.data.streaming import ImageTextStream, load_stream
from hf_masked_vl.errors import UsageError
from hf_masked_vl.models.losses import clip_contrastive_loss, nt_xent_loss
from hf_masked_vl.training.processes import ends_its_process_group

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def launch(argv: list[str], processes: int, output) -> None:
    common = [
        "--output_dir", str(output), "--max_steps", str(STEPS), "--save_steps", str(STEPS), "--logging_steps", "1",
        "--bf16", "false", "--dataloader_num_workers", "0", "--disable_tqdm", "true", "--report_to", "none",
        "--demo_num_train", "256", "--max_eval_samples", "16", "--seed", "3",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--multi_gpu",
        "--main_process_port", "0", "scripts/run_pretraining.py", *common, *argv,  # 0: a free port, not a busy one
        "--per_device_train_batch_size", str(16 // processes), "--use_cpu", "true", "--ddp_backend", "gloo",
        "--ddp_find_unused_parameters", "false",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_processes_train_checkpoint_and_end_cleanly(small_demo, tmp_path):
    """Exit status 0 means every rank ended without an abort at interpreter shutdown (a rank leaving with its gloo
    group alive aborts and the launcher kills the others)."""
    output = tmp_path / "two"
    launch(["--config_overrides", TINY_OVERRIDES], 2, output)
    checkpoint = output / f"checkpoint-{STEPS}"
    names = {path.name for path in checkpoint.iterdir()}
    assert {"data_state-rank0.json", "data_state-rank1.json", "rng_state_0.pth", "rng_state_1.pth"} <= names
    assert "ema.safetensors" in names
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses)
    for rank in (0, 1):  # each rank's own stream position, for an exact resume
        state = json.loads((checkpoint / f"data_state-rank{rank}.json").read_text())
        assert state["world_size"] == 2 and state["global_step"] == STEPS and state["positions"], state
    assert (output / "model.safetensors").is_file()


# ---------------------------------------------------------------- global-batch losses under two simulated ranks

LOCAL = 3  # examples per rank


class TwoRanks:
    """Two processes simulated in one, for a loss that all-gathers its features.

    `torch.distributed` reports rank `r` of 2. A first pass runs the loss on each rank with a placeholder gather and
    records what each rank gathers, in call order; the second pass hands every gather all ranks' recorded tensors,
    this rank's slot being the live tensor it was given. So the gradient of the second pass's losses reaches every
    rank's inputs through the gathered slots, as `torch.distributed.nn.functional.all_gather` sends it back across
    processes. The plain `torch.distributed.all_gather` copies values without gradients, as it does for real."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.rank, self.recorded = monkeypatch, 0, {0: [], 1: []}
        self.replaying, self.calls = False, 0
        monkeypatch.setattr(dist, "is_available", lambda: True)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        monkeypatch.setattr(dist, "get_rank", lambda group=None: self.rank)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
        monkeypatch.setattr(differentiable, "all_gather", self._gather)
        monkeypatch.setattr(dist, "all_gather", self._gather_values)

    def _slots(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        if not self.replaying:
            self.recorded[self.rank].append(tensor)
            return [tensor, tensor]
        slots = [self.recorded[rank][self.calls] for rank in (0, 1)]
        slots[self.rank] = tensor
        self.calls += 1
        return slots

    def _gather(self, tensor: torch.Tensor, group=None) -> tuple[torch.Tensor, ...]:
        return tuple(self._slots(tensor))

    def _gather_values(self, tensor_list, tensor, group=None, async_op=False):
        for target, value in zip(tensor_list, self._slots(tensor)):
            target.copy_(value.detach())

    def mean_loss(self, loss_of_rank) -> torch.Tensor:
        """(loss on rank 0 + loss on rank 1) / 2, as DDP's averaged gradients see it; `loss_of_rank(r)` computes
        rank r's loss from its own shard of the inputs."""
        for replaying in (False, True):
            self.replaying, losses = replaying, []
            for rank in (0, 1):
                self.rank, self.calls = rank, 0
                losses.append(loss_of_rank(rank))
        return (losses[0] + losses[1]) / 2


def shard(tensor: torch.Tensor, rank: int) -> torch.Tensor:
    return tensor[rank * LOCAL : (rank + 1) * LOCAL]


def reference_clip_loss(images: torch.Tensor, texts: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric InfoNCE over the whole global batch, one row at a time: image i's caption is text i, and back."""
    rows = []
    for i in range(len(images)):
        image_to_texts = F.log_softmax(scale * texts @ images[i], dim=0)[i]
        text_to_images = F.log_softmax(scale * images @ texts[i], dim=0)[i]
        rows.append(-(image_to_texts + text_to_images) / 2)
    return torch.stack(rows).mean()


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR over the whole global batch, one anchor at a time: the positive is the other view of the same image,
    the negatives every other representation of either view."""
    z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    terms = []
    for anchors, others in ((z1, z2), (z2, z1)):
        for i, anchor in enumerate(anchors):
            same_view = torch.cat([anchors[:i], anchors[i + 1 :]])
            logits = torch.cat([others @ anchor, same_view @ anchor]) / temperature
            terms.append(-F.log_softmax(logits, dim=0)[i])
    return torch.stack(terms).mean()


def test_clip_loss_of_two_ranks_is_the_global_batch_loss(monkeypatch):
    torch.manual_seed(0)
    images = F.normalize(torch.randn(2 * LOCAL, 8), dim=-1).requires_grad_()
    texts = F.normalize(torch.randn(2 * LOCAL, 8), dim=-1).requires_grad_()
    scale = torch.tensor(2.5)
    ranks = TwoRanks(monkeypatch)
    loss = ranks.mean_loss(lambda rank: clip_contrastive_loss(shard(images, rank), shard(texts, rank), scale))
    gradients = torch.autograd.grad(loss, (images, texts))
    expected = reference_clip_loss(images, texts, 2.5)
    torch.testing.assert_close(loss, expected)
    for got, wanted in zip(gradients, torch.autograd.grad(expected, (images, texts))):
        torch.testing.assert_close(got, wanted)


def test_nt_xent_of_two_ranks_is_the_global_batch_loss(monkeypatch):
    torch.manual_seed(1)
    z1, z2 = torch.randn(2 * LOCAL, 8, requires_grad=True), torch.randn(2 * LOCAL, 8, requires_grad=True)
    ranks = TwoRanks(monkeypatch)
    loss = ranks.mean_loss(lambda rank: nt_xent_loss(shard(z1, rank), shard(z2, rank), 0.2))
    gradients = torch.autograd.grad(loss, (z1, z2))
    expected = reference_nt_xent(z1, z2, 0.2)
    torch.testing.assert_close(loss, expected)
    for got, wanted in zip(gradients, torch.autograd.grad(expected, (z1, z2))):
        torch.testing.assert_close(got, wanted)


def test_each_process_reads_its_own_shards(small_demo):
    def captions(rank: int | None) -> list[str]:
        source = load_stream("parquet", small_demo.train_files)
        if rank is not None:
            source = split_dataset_by_node(source, rank=rank, world_size=2)
        stream = ImageTextStream(source, lambda image, rng, maps=None: {}, shuffle_buffer=0)
        return [example["caption"] + str(example["sample_seed"]) for example in stream]

    everything, first, second = captions(None), captions(0), captions(1)
    assert first and second and not set(first) & set(second)
    assert sorted(first + second) == sorted(everything)


# ---------------------------------------------------------------- the process group ends with the run


def start_single_process_group(store_path) -> None:
    """A gloo group of one process, as accelerate starts one for a multi-process run."""
    store = torch.distributed.FileStore(str(store_path), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)


def gloo_threads() -> list[str]:
    """Names of this process's native threads that belong to gloo (its worker and transport loops)."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):  # not Linux: nothing to count
        return []
    names = [open(os.path.join(tasks, task, "comm")).read().strip() for task in os.listdir(tasks)]
    return [name for name in names if "gloo" in name]


@pytest.fixture
def process_group_cleanup():
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def test_a_run_ends_the_process_group_it_started(tmp_path, monkeypatch, process_group_cleanup):
    """After `main` returns or stops on a usage error, the group it started is destroyed and gloo's threads are
    joined: none is left to abort the process at interpreter shutdown (the SIGABRT of a rank leaving early)."""

    def start_then_fail(argv):
        start_single_process_group(tmp_path / "failed")
        assert gloo_threads()
        raise UsageError("--output_dir is required")

    monkeypatch.setattr(run, "prepare_arguments", start_then_fail)
    with pytest.raises(UsageError):
        run.main([])
    assert not torch.distributed.is_initialized() and not gloo_threads()

    def start_then_return() -> str:
        start_single_process_group(tmp_path / "finished")
        return "result"

    assert ends_its_process_group(start_then_return)() == "result"
    assert not torch.distributed.is_initialized() and not gloo_threads()


def test_a_callers_process_group_is_left_alone(tmp_path, monkeypatch, process_group_cleanup):
    start_single_process_group(tmp_path / "caller")

    def fail(argv):
        raise UsageError("--output_dir is required")

    monkeypatch.setattr(run, "prepare_arguments", fail)
    with pytest.raises(UsageError):
        run.main([])
    assert torch.distributed.is_initialized()
