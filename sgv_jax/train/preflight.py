"""Checks of a run config that need no data and no devices, run before anything is generated,
loaded or compiled, so that a typo in an override fails at once, naming the field."""

from __future__ import annotations

from sgv_jax.model_dir import check_sgv_dir
from sgv_jax.paths import resolve
from sgv_jax.train import setup

# Files a run writes into its workdir before its first checkpoint, which are not progress.
_NOT_PROGRESS = {"config.json", "demo_data"}


def check_run_config(config) -> None:
    """Field values (setup.check_config), `init_from`, and that the data paths exist."""
    problems = []
    try:
        setup.check_config(config)
    except ValueError as e:
        lines = [line.strip() for line in str(e).splitlines()[1:]]
        # A demo config's data paths are filled in after this check, by the demo data.
        problems += [p for p in lines if not (config.data.demo and p == "data.train_file is empty")]
    if config.init_from:
        try:
            check_sgv_dir(config.init_from, "init_from")
        except FileNotFoundError as e:
            problems.append(f"{e}\n    (init_from is an sgv checkpoint: a stage's WORKDIR/sgv, or "
                            "what launch/convert.py --to sgv wrote)")
        except ValueError as e:
            problems.append(str(e))
    for field in ("train_file", "eval_file", "image_folder", "tokenizer"):
        value = config.data[field]
        if value and not resolve(value).exists():
            problems.append(f"data.{field} {value} does not exist")
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))


def leftover_files(workdir: str) -> list[str]:
    """Names in `workdir` from an earlier run (empty for a new workdir)."""
    folder = resolve(workdir)
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name not in _NOT_PROGRESS)
