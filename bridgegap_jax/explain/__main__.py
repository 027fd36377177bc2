"""python -m bridgegap_jax.explain: its flags, read before the analysis (and jax) is imported, so that
--help answers at once and exits 0."""

import sys

from absl import app, flags

from bridgegap_jax.base.errors import answer_help


def define_flags():
    flags.DEFINE_multi_string("run", None, "NAME=WORKDIR of a run to compare; give two or more.")
    flags.DEFINE_string(
        "reference", None, "Name of the reference (full-label) run; default: the first --run."
    )
    flags.DEFINE_string("split", "test", "Dataset split to explain.")
    flags.DEFINE_string(
        "out",
        None,
        "Output folder for the PNG figures and summary.json; default: a new folder "
        "explain/<YYYYmmdd-HHMMSS>, so that earlier results and tracked files are never overwritten.",
    )
    flags.DEFINE_float(
        "inference_alpha", 5.0, "BoostLU alpha of the '+ BoostLU at inference' columns (1: none)."
    )
    flags.DEFINE_float(
        "top_k_percent", 20.0, "k of the top-k% IoU between a model's and the reference's map."
    )
    flags.DEFINE_list(
        "classes", [], "Figure rows only for these classes (names, or indices where there are none)."
    )
    flags.DEFINE_list("image_ids", [], "Figure rows only for these images (their index in the split).")
    flags.DEFINE_integer(
        "num_rows", 8, "Figure rows: a seeded random sample of the matching (image, class) pairs."
    )
    flags.DEFINE_integer("rows_per_figure", 4, "Rows per PNG file.")
    flags.DEFINE_integer("seed", 0, "Seed of the row sample.")
    flags.DEFINE_string(
        "data_dir", None, "Where the dataset is prepared; default: the reference run's config.data.data_dir."
    )
    flags.mark_flags_as_required(["run"])


def run(argv):
    from bridgegap_jax.explain.cli import main

    main(argv)


define_flags()
answer_help(sys.argv)
app.run(run)
