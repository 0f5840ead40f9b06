r"""Train one stage: the config picks which (captions for stage 1, conversations for stage 2).

examples:
  python launch/train.py --config configs/pretrain.py --workdir runs/pt --config.init_from=models/init
  python launch/train.py --config configs/pretrain.py:demo --workdir runs/demo/pretrain \
      --config.max_steps=20 --config.optim.lr=1e-3

Overrides take the form --config.FIELD=VALUE (fields: configs/common.py) and are checked before
any work starts. Re-running with the same --workdir resumes from its latest checkpoint; Ctrl-C
or SIGTERM finishes the step, saves it and exits (130 / 143); a second Ctrl-C aborts. The final
model is exported to WORKDIR/sgv. On several processes (TPU pod, multi-GPU/CPU hosts)
jax.distributed is initialised first: TPU pods auto-detect; otherwise pass
--coordinator/--num_processes/--process_id (or JAX_COORDINATOR_ADDRESS etc.).
"""

from absl import app, flags, logging
from ml_collections import config_flags

from sgv_jax import allocator, cli

config_flags.DEFINE_config_file("config", None, "Run config file[:variant].", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the final model go here.")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("debug", False, "On an error, show the full traceback.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv) -> int:
    del argv

    def run() -> int:
        from sgv_jax.train import distributed

        distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
        from sgv_jax.stop import exit_status
        from sgv_jax.train.loop import NonFiniteLoss, train

        logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
        try:
            result = train(FLAGS.config, FLAGS.workdir)
        except NonFiniteLoss as e:  # expected: the message names the last good checkpoint
            raise cli.UserError(str(e)) from None
        return exit_status(result["stopped_by"]) if result.get("stopped_by") else 0

    return cli.run_guarded(run, FLAGS.debug)


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()  # before any work: see sgv_jax/allocator.py
    app.run(main, flags_parser=cli.parse_absl_flags)
