"""Training checkpoints: orbax CheckpointManager over the train state, plus per-host data
iterator state and the run config, so re-running a command with the same workdir resumes.

Layout under WORKDIR/checkpoints:
  frozen/                         the frozen parameters (compute dtype), written once per run
                                  before the first step: they never change
  <step>/state                    orbax item (collective, one checkpoint for all hosts): step,
                                  trainable params, their Adam moments
  data/<step>.p<process>.json     each host's data iterator state (written before the orbax
                                  save, so a finished step always has its data state)
"""

from __future__ import annotations

import json
from typing import Any

import jax
import orbax.checkpoint as ocp

from sgv_jax.paths import resolve


class TrainCheckpointer:
    def __init__(self, workdir: str, keep: int):
        self.directory = resolve(workdir) / "checkpoints"  # local folder or gs://
        self.data_dir = self.directory / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.frozen_dir = self.directory / "frozen"
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state",),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save_frozen(self, frozen: dict) -> None:
        """Once per run, before the first step (orbax writes to a temporary name and renames)."""
        if not jax.tree.leaves(frozen):  # everything trainable: nothing to write
            return
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(self.frozen_dir, frozen, force=True)
        checkpointer.wait_until_finished()

    def restore_frozen(self, abstract_frozen: dict) -> dict:
        if not jax.tree.leaves(abstract_frozen):
            return abstract_frozen
        if not self.frozen_dir.exists():
            raise FileNotFoundError(f"{self.frozen_dir} is missing: the step checkpoints in "
                                    f"{self.directory} cannot be resumed without it")
        return ocp.StandardCheckpointer().restore(self.frozen_dir, abstract_frozen)

    def save(self, step: int, state: dict, data_state: dict[str, Any]) -> None:
        # One small object per host; written before the orbax save, so a finished step
        # always has its data state.
        (self.data_dir / f"{step}.p{jax.process_index()}.json").write_text(json.dumps(data_state))
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                          force=True)
        self.manager.wait_until_finished()
        self._prune_data_states()

    def restore(self, step: int, abstract_state: dict) -> tuple[dict, dict[str, Any]]:
        """Arrays come back with the shardings of the abstract tree (ShapeDtypeStructs)."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        path = self.data_dir / f"{step}.p{jax.process_index()}.json"
        if not path.exists():
            raise FileNotFoundError(f"checkpoint step {step} has no data iterator state {path}; "
                                    "it was written by a different number of hosts?")
        return restored["state"], json.loads(path.read_text())

    def _prune_data_states(self) -> None:
        kept = {str(s) for s in self.manager.all_steps()}
        for path in self.data_dir.iterdir():
            if path.name.split(".", 1)[0] not in kept:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        self.manager.close()
