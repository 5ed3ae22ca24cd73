"""Entry point of the ``xrayage`` command.

Subcommands are registered lazily so that ``xrayage inspect`` does not import
torch, onnxruntime or the web stack.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

import click

from .. import __version__
from ..errors import XRayAgeError

# name -> (module, attribute): one module per subcommand.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("xrayage.cli.inspect", "inspect"),
    "predict": ("xrayage.cli.predict", "predict"),
    "train": ("xrayage.cli.train", "train"),
    "evaluate": ("xrayage.cli.evaluate", "evaluate"),
    "export": ("xrayage.cli.export", "export"),
    "calibrate": ("xrayage.cli.calibrate", "calibrate"),
    "analyze": ("xrayage.cli.analyze", "analyze"),
    "crossfit": ("xrayage.cli.crossfit", "crossfit"),
    "adapt": ("xrayage.cli.adapt", "adapt"),
    "import-torchscript": ("xrayage.cli.import_torchscript", "import_torchscript_cmd"),
    "serve": ("xrayage.cli.serve", "serve"),
    "dicom-node": ("xrayage.cli.dicom_node", "dicom_node"),
    "dicomweb": ("xrayage.cli.dicomweb", "dicomweb"),
}

EXIT_BAD_INPUT = 2


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when it is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in SUBCOMMANDS:
            return None
        module, attr = SUBCOMMANDS[cmd_name]
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xrayage")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """X-ray age: the age a deep network reads from a frontal chest radiograph."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # A refused file gets one line, its reason (XRayAgeInputError); pydicom's own
        # warnings and logged tracebacks about the same file come back with -v.
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 1 failure, 2 bad input or usage)."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="xrayage",
            standalone_mode=False,
        )
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return EXIT_BAD_INPUT if isinstance(exc, click.UsageError) else exc.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except XRayAgeError as exc:
        click.echo(f"xrayage: error: {exc}", err=True)
        return EXIT_BAD_INPUT if isinstance(exc, ValueError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
