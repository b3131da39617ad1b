"""`python -m db.migrations --url URL COMMAND ...`: the alembic command line, without an ini."""

from __future__ import annotations

import sys

from alembic.config import CommandLine

from db.migrations import alembic_config


def main(argv: list[str]) -> None:
    url = None
    if argv[:1] == ["--url"] and len(argv) > 1:
        url, argv = argv[1], argv[2:]
    cli = CommandLine(prog="python -m db.migrations [--url URL]")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("too few arguments")
    cli.run_cmd(alembic_config(url), options)


if __name__ == "__main__":
    main(sys.argv[1:])
