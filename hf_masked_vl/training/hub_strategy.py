"""`--hub_strategy` during training: what a run with `--push_to_hub` uploads at each checkpoint, always through the
package's allow-list push (`hub.push_checkpoint`), never the Trainer's own push of the whole folder. The final
folder is pushed at the end of the run in every case (`run.push_run`)."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, HubStrategy, SaveStrategy

from ..hub import push_checkpoint, redacted_first_line

logger = logging.getLogger(__name__)


class HubPushCallback(TrainerCallback):
    """After each checkpoint is saved, the main process pushes it in one commit, as transformers' Trainer does
    (`Trainer._push_from_checkpoint`, which makes one or two commits):

    - `every_save`: the checkpoint's model files (weights, config, code, tokenizer, processor) at the top of the
      repository, so the repository always holds the newest weights;
    - `checkpoint`: the same, and the checkpoint with its training state as `last-checkpoint/` (resume with
      `--resume_from_checkpoint` after downloading it);
    - `all_checkpoints`: the same, with every checkpoint kept as `checkpoint-N/` instead of `last-checkpoint/`.

    The commit message is transformers' ("Training in progress, step N" or "epoch N"). A push that fails is a
    warning naming the checkpoint (the token never shown): training goes on, and the final push at the end says
    whether the Hub is reachable. The token is held in memory only."""

    def __init__(
        self,
        strategy: HubStrategy,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
    ):
        self.strategy, self.repo_id, self.private, self.revision = HubStrategy(strategy), repo_id, private, revision
        self._token = token

    def state_copy_in_repo(self, checkpoint: str) -> str | None:
        """Where `checkpoint` (a `checkpoint-N` name) goes in the repository with its training state, besides its
        model files at the top (None: nowhere)."""
        folders = {HubStrategy.CHECKPOINT: "last-checkpoint", HubStrategy.ALL_CHECKPOINTS: checkpoint}
        return folders.get(self.strategy)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if not folder.is_dir():
            return
        by_step = SaveStrategy(args.save_strategy) == SaveStrategy.STEPS
        progress = f"step {state.global_step}" if by_step else f"epoch {int(state.epoch or 0)}"
        try:
            url = push_checkpoint(
                folder,
                self.repo_id,
                token=self._token,
                private=self.private,
                revision=self.revision,
                state_copy_in_repo=self.state_copy_in_repo(folder.name),
                commit_message=f"Training in progress, {progress}",
            )
        except Exception as error:  # the network, the Hub: training must not stop for a mid-run upload
            logger.warning(
                "--hub_strategy %s: pushing %s to %s failed (%s); training goes on",
                self.strategy.value,
                folder.name,
                self.repo_id,
                redacted_first_line(error, self._token),
            )
            return
        logger.info("--hub_strategy %s: pushed %s to %s", self.strategy.value, folder.name, url)


def add_hub_push(trainer, repo_id: str, token: str | None) -> None:
    """Give `trainer` a `HubPushCallback` for its `--hub_strategy` (nothing for `end`: the run pushes its final
    folder once, at the end)."""
    args = trainer.args
    if HubStrategy(args.hub_strategy) == HubStrategy.END:
        return
    trainer.add_callback(HubPushCallback(args.hub_strategy, repo_id, token, args.hub_private_repo, args.hub_revision))


__all__ = ["HubPushCallback", "add_hub_push"]
