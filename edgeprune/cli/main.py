"""Entry point: ``edgeprune export | tune | quantize | build | compare | bench | inspect | lint | segment | calibrate |
demo | serve | export-triton | load-test``.

User errors (:class:`EdgepruneError`) print one line and exit with code 2; usage errors exit 2 too.
"""

from __future__ import annotations

import sys

import typer

from edgeprune.cli.bench_cmd import bench
from edgeprune.cli.build_cmd import build
from edgeprune.cli.calibrate_cmd import calibrate
from edgeprune.cli.compare_cmd import compare
from edgeprune.core.console import console, out
from edgeprune.cli.demo_cmd import demo
from edgeprune.cli.export_cmd import export
from edgeprune.cli.export_triton_cmd import export_triton
from edgeprune.cli.inspect_cmd import inspect
from edgeprune.cli.lint_cmd import lint
from edgeprune.cli.load_test_cmd import load_test
from edgeprune.cli.quantize_cmd import quantize
from edgeprune.cli.segment_cmd import segment
from edgeprune.cli.serve_cmd import serve
from edgeprune.cli.tune_cmd import tune
from edgeprune.core.errors import EdgepruneError

app = typer.Typer(
    name="edgeprune",
    help="Token reduction for Vision Transformers: export static-shape ONNX, lint, build engines (ONNX Runtime, TensorRT), compare, benchmark, run the video demo.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from edgeprune.core.version import __version__

        out.print(f"edgeprune {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        out.print(ctx.get_help())
        raise typer.Exit(0)


app.command(help=export.__doc__)(export)
app.command(help=bench.__doc__)(bench)
app.command(help=inspect.__doc__)(inspect)
app.command(help=lint.__doc__)(lint)
app.command(help=quantize.__doc__)(quantize)
app.command(help=build.__doc__)(build)
app.command(help=compare.__doc__)(compare)
app.command(help=segment.__doc__)(segment)
app.command(help=calibrate.__doc__)(calibrate)
app.command(help=demo.__doc__)(demo)
app.command(help=tune.__doc__)(tune)
app.command(help=serve.__doc__)(serve)
app.command(name="export-triton", help=export_triton.__doc__)(export_triton)
app.command(name="load-test", help=load_test.__doc__)(load_test)


def main(argv: list[str] | None = None) -> int:
    # Typer (in standalone mode) reports usage errors itself with exit code 2 and raises SystemExit;
    # edgeprune's own errors come through as exceptions and become one line + exit code 2.
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (EdgepruneError, ModuleNotFoundError) as exc:
        from rich.markup import escape

        if isinstance(exc, ModuleNotFoundError):  # safety net behind require_extra: a missing extra is one line too
            from edgeprune.core.extras import extra_for_missing

            if (exc := extra_for_missing(exc)) is None:
                raise
        # The message is text, not markup: "[1, 4]" or "[bold]" in it must print as written.
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
