"""Why a path given as a model is not an sgv checkpoint, said in terms of what the user has:
nothing there, a training workdir (whose export is WORKDIR/sgv), an unfinished conversion, or
a folder in another format."""

from __future__ import annotations

from sgv_jax.paths import resolve


def check_sgv_dir(path: str, what: str) -> None:
    """Raises FileNotFoundError (or read_sgv_config's ValueError) naming `what` (the flag or
    config field, e.g. '--checkpoint') unless `path` is an sgv checkpoint."""
    from sgv_jax.checkpoint_sgv import read_sgv_config

    folder = resolve(path)
    if not folder.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if (folder / "sgv" / "config.json").exists():
        raise FileNotFoundError(f"{what} {path} is a training workdir; its model is exported to "
                                f"{path.rstrip('/')}/sgv: pass that")
    if (folder / "checkpoints").exists():
        raise FileNotFoundError(f"{what} {path} is a training workdir without an export yet "
                                "(WORKDIR/sgv is written when the run reaches its last step); "
                                "re-run its training command to finish it")
    if not (folder / "config.json").exists():
        hint = (" (a failed or unfinished conversion)" if str(path).rstrip("/").endswith(".partial")
                else "; convert a model with launch/convert.py --to sgv")
        raise FileNotFoundError(f"{what} {path} is not an sgv checkpoint: no config.json{hint}")
    try:
        read_sgv_config(path)
    except ValueError as e:
        raise ValueError(f"{what} {path}: {e}") from None
