"""What every `launch/` command shares: help that shows defaults and examples, and one error path.

Expected failures (bad flags, missing files, bad records or images, invalid config values) end
with one or two lines on stderr that name the file / record / field, and a non-zero exit status;
the traceback is shown only with `--debug`, or for an error this module does not expect (a bug).
Ctrl-C that reaches here (nothing saved it) exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import textwrap
import traceback
from collections.abc import Callable, Sequence

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UserError(Exception):
    """An expected failure whose message tells the user what is wrong and what to do."""


# ValueError covers this project's validation errors (ConversionError, BadRecord, config
# checks); OSError the file system's (missing files and folders, permissions, full disks).
EXPECTED = (UserError, ValueError, OSError)


def describe(error: BaseException) -> str:
    """The user-facing text of an expected error."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


def run_guarded(main: Callable[[], int | None], debug: bool = False) -> int:
    """Runs `main` and turns expected errors into a message and an exit status."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except EXPECTED as e:
        if debug:
            traceback.print_exc()
        else:
            print(f"error: {describe(e)}\n(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


# ---------------------------------------------------------------------------------------------
# argparse commands


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and appends each option's default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is not None and default is not False and default is not argparse.SUPPRESS
                and action.option_strings
                and "%(default)" not in text and "default" not in text):
            text += " (default: %(default)s)"
        return text


def split_doc(doc: str) -> tuple[str, str]:
    """(one-line summary, the rest): a docstring's first paragraph becomes the description,
    whatever follows (the usage examples) is shown after the options."""
    first, _, rest = doc.strip().partition("\n\n")
    return textwrap.fill(" ".join(first.split()), 100), rest.rstrip()


def parser(doc: str, subcommands: bool = False) -> argparse.ArgumentParser:
    """A command's parser from its docstring. With `subcommands`, `--debug` is left to each
    subcommand (argparse lets a subcommand's default overwrite the parent's value)."""
    summary, examples = split_doc(doc)
    p = argparse.ArgumentParser(description=summary, epilog=examples,
                                formatter_class=HelpFormatter)
    if not subcommands:
        add_debug(p)
    return p


def subcommand(subparsers, name: str, doc: str) -> argparse.ArgumentParser:
    """A subcommand whose `--help` shows its own summary and examples."""
    summary, examples = split_doc(doc)
    p = subparsers.add_parser(name, help=summary, description=summary, epilog=examples,
                              formatter_class=HelpFormatter)
    add_debug(p)
    return p


def add_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="on an error, show the full traceback")


# ---------------------------------------------------------------------------------------------
# absl commands with an ml_collections `--config` (train.py, plan.py)


def config_fields(config, prefix: str = "") -> list[str]:
    """Every leaf field of a ConfigDict as a dotted path."""
    names = []
    for key, value in config.items():
        path = prefix + key
        names += config_fields(value, path + ".") if hasattr(value, "items") else [path]
    return names


def unknown_override(argv: Sequence[str], config_file: str) -> str | None:
    """For the first `--config.KEY=…` that names no field of the config, a message with the
    closest field names; None if every override names a field."""
    from sgv_jax.train.config_file import load_config_file

    fields = config_fields(load_config_file(config_file))
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config."):].split("=", 1)[0]
        if key not in fields and not any(f.startswith(key + ".") for f in fields):
            close = nearest_field(key, fields)
            hint = f"; did you mean {' or '.join(close)}?" if close else \
                f"; the fields are listed in {config_file.partition(':')[0]}"
            return f"--config.{key}: {config_file} has no field {key!r}{hint}"
    return None


def nearest_field(key: str, fields: Sequence[str]) -> list[str]:
    """Fields close to a mistyped `key`: siblings with a similar last name first."""
    parent, _, leaf = key.rpartition(".")
    siblings = {f.rpartition(".")[2]: f for f in fields if f.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(leaf, list(siblings), n=2, cutoff=0.6)
    return [siblings[c] for c in close] or difflib.get_close_matches(key, fields, n=2, cutoff=0.7)


def config_file_problem(argv: Sequence[str]) -> str | None:
    """A clear message when `--config FILE[:variant]` cannot be loaded, else None."""
    from sgv_jax.train.config_file import load_config_file

    spec = flag_value(argv, "--config")
    if spec is None:
        return None
    path = spec.partition(":")[0]
    if not os.path.isfile(path):
        return f"--config {spec}: no file {path} (e.g. configs/pretrain.py or configs/finetune.py)"
    try:
        load_config_file(spec)
    except (ValueError, ImportError, SyntaxError) as e:
        return f"--config {spec}: {e}"
    return None


def flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def parse_absl_flags(argv: list[str]) -> list[str]:
    """absl's flag parser with one-line errors: a missing or broken config file, an override
    that names no field (with the nearest names), a bad flag value. Use as
    `app.run(main, flags_parser=parse_absl_flags)`."""
    from absl import flags

    problem = config_file_problem(argv[1:])
    if problem is None:
        try:
            return flags.FLAGS(argv)
        except SystemExit:
            # absl exits 1 after printing --help; asking for help is not an error.
            if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
                sys.exit(0)
            raise
        except flags.Error as e:
            problem = str(e)
        except (AttributeError, KeyError, TypeError, ValueError, OSError) as e:
            spec = flag_value(argv[1:], "--config")
            problem = (spec and unknown_override(argv[1:], spec)) or f"{type(e).__name__}: {e}"
    print(f"error: {problem}\nPass --help to see the flags.", file=sys.stderr)
    sys.exit(EXIT_USAGE)
