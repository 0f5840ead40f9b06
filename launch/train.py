"""Train one stage.

    python launch/train.py --config configs/pretrain.py --workdir runs/pt
    python launch/train.py --config configs/pretrain.py:demo --workdir runs/demo/pretrain \
        --config.max_steps=20 --config.optim.lr=1e-3

Re-running with the same --workdir resumes from its latest checkpoint. On several processes
(TPU pod, multi-GPU/CPU hosts) jax.distributed is initialised first: TPU pods auto-detect;
otherwise pass --coordinator/--num_processes/--process_id (or JAX_COORDINATOR_ADDRESS etc.).
"""



from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Run config file[:variant].", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and the final model go here.")
flags.DEFINE_string("coordinator", None, "host:port of process 0 for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from sgv_jax.train import distributed

    distributed.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    from sgv_jax.train.loop import train

    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    result = train(FLAGS.config, FLAGS.workdir)
    logging.info("done: %s", result)


if __name__ == "__main__":
    app.run(main)
