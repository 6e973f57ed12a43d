"""Entry point: ``edgeprune export | bench | inspect``.

User errors (:class:`EdgepruneError`) print one line and exit with code 2; usage errors exit 2 too.
"""

from __future__ import annotations

import sys

import click
import typer

from edgeprune.cli.bench_cmd import bench
from edgeprune.cli.common import console
from edgeprune.cli.export_cmd import export
from edgeprune.cli.inspect_cmd import inspect
from edgeprune.errors import EdgepruneError

app = typer.Typer(
    name="edgeprune",
    help="Token reduction for Vision Transformers: export static-shape ONNX, benchmark, inspect.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command(help=export.__doc__)(export)
app.command(help=bench.__doc__)(bench)
app.command(help=inspect.__doc__)(inspect)


def main(argv: list[str] | None = None) -> int:
    try:
        result = app(args=argv, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except EdgepruneError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return 2
    except click.exceptions.Abort:
        console.print("aborted")
        return 130
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
