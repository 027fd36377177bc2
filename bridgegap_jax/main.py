"""Entry point: python -m bridgegap_jax.main --config=configs/demo.py --workdir=runs/demo

Rerunning the same command resumes an interrupted run, or reports a finished one.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py); override fields with --config.a.b=value.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run: checkpoints, metrics.jsonl, result.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    from bridgegap_jax import train  # after flag parsing: --help stays fast
    from bridgegap_jax.datasets.catalog import DatasetNotFoundError

    try:
        train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except DatasetNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
