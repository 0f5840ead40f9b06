"""Training checkpoints: orbax CheckpointManager over the train state, plus per-host data
iterator state and the run config, so re-running a command with the same workdir resumes.

Layout under WORKDIR/checkpoints:
  <step>/state, <step>/frozen     orbax items (collective, one checkpoint for all hosts)
  data/<step>.p<process>.json     each host's data iterator state (written before the orbax
                                  save, so a finished step always has its data state)
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class TrainCheckpointer:
    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.data_dir = os.path.join(self.directory, "data")
        os.makedirs(self.data_dir, exist_ok=True)
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "frozen"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, frozen: dict, data_state: dict[str, Any]) -> None:
        path = os.path.join(self.data_dir, f"{step}.p{jax.process_index()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(data_state, f)
        os.replace(path + ".tmp", path)
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), frozen=ocp.args.StandardSave(frozen)), force=True)
        self.manager.wait_until_finished()
        self._prune_data_states()

    def restore(self, step: int, abstract_state: dict, abstract_frozen: dict
                ) -> tuple[dict, dict, dict[str, Any]]:
        """Arrays come back with the shardings of the abstract trees (ShapeDtypeStructs)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            frozen=ocp.args.StandardRestore(abstract_frozen)))
        path = os.path.join(self.data_dir, f"{step}.p{jax.process_index()}.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint step {step} has no data iterator state {path}; "
                                    "it was written by a different number of hosts?")
        with open(path) as f:
            data_state = json.load(f)
        return restored["state"], restored["frozen"], data_state

    def _prune_data_states(self) -> None:
        kept = {str(s) for s in self.manager.all_steps()}
        for name in os.listdir(self.data_dir):
            if name.split(".", 1)[0] not in kept:
                os.remove(os.path.join(self.data_dir, name))

    def close(self) -> None:
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
