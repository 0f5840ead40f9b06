"""Training checkpoints: orbax CheckpointManager over the train state, plus per-host data
iterator state and the run config, so re-running a command with the same workdir resumes.

Layout under WORKDIR/checkpoints:
  <step>/state, <step>/frozen     orbax items (collective, one checkpoint for all hosts)
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
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "frozen"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, frozen: dict, data_state: dict[str, Any]) -> None:
        # One small object per host; written before the orbax save, so a finished step
        # always has its data state.
        (self.data_dir / f"{step}.p{jax.process_index()}.json").write_text(json.dumps(data_state))
        items = {"state": ocp.args.StandardSave(state)}
        if jax.tree.leaves(frozen):  # orbax rejects empty items (everything trainable)
            items["frozen"] = ocp.args.StandardSave(frozen)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self.manager.wait_until_finished()
        self._prune_data_states()

    def restore(self, step: int, abstract_state: dict, abstract_frozen: dict
                ) -> tuple[dict, dict, dict[str, Any]]:
        """Arrays come back with the shardings of the abstract trees (ShapeDtypeStructs)."""
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if jax.tree.leaves(abstract_frozen):
            items["frozen"] = ocp.args.StandardRestore(abstract_frozen)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        path = self.data_dir / f"{step}.p{jax.process_index()}.json"
        if not path.exists():
            raise FileNotFoundError(f"checkpoint step {step} has no data iterator state {path}; "
                                    "it was written by a different number of hosts?")
        data_state = json.loads(path.read_text())
        frozen = restored["frozen"] if "frozen" in items else abstract_frozen
        return restored["state"], frozen, data_state

    def _prune_data_states(self) -> None:
        kept = {str(s) for s in self.manager.all_steps()}
        for path in self.data_dir.iterdir():
            if path.name.split(".", 1)[0] not in kept:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        self.manager.close()


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
