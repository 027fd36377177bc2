"""What the launch scripts share: run directory and config flags, and `--config.*` passthrough."""

import argparse


def add_run_flags(parser: argparse.ArgumentParser, where: str) -> None:
    parser.add_argument(
        "--config", default="configs/openimages.py", help="config file, relative to the repository"
    )
    parser.add_argument("--workdir", help=f"run directory ({where})")
    parser.add_argument("--data_dir", help=f"prepared tfds datasets, {where} (config.data.data_dir)")
    parser.add_argument(
        "--pretrained",
        help=f"converted ImageNet trunk, {where} (config.model.pretrained; "
        "'' trains from scratch; default: the config's)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")


def run_flags(args: argparse.Namespace, data_dir: str, *extra: str) -> list[str]:
    """The training command's flags: config, workdir, data, weights, `extra`, then the user's overrides."""
    flags = [f"--config={args.config}", f"--workdir={args.workdir}", f"--config.data.data_dir={data_dir}"]
    if args.pretrained is not None:
        flags.append(f"--config.model.pretrained={args.pretrained}")
    return flags + list(extra) + args.overrides


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse; every unknown flag must be a `--config.a.b=value` override, kept in args.overrides."""
    args, extra = parser.parse_known_args(argv)
    unknown = [flag for flag in extra if flag != "--" and not flag.startswith("--config.")]
    if unknown:
        parser.error(
            f"unrecognized arguments: {' '.join(unknown)} (config overrides look like --config.a.b=value)"
        )
    args.overrides = [flag for flag in extra if flag != "--"]
    return args
