"""The ``flexheads`` executable (and ``python -m flexheads``): a command goes to the warm server of a Snakemake
run when there is one (:mod:`flexheads.warm`), and otherwise runs in this process."""

import sys


def main() -> None:
    from flexheads.warm import delegate

    status = delegate(["flexheads", *sys.argv[1:]])
    if status is not None:
        sys.exit(status)
    from flexheads.cli import app

    app(prog_name="flexheads")


if __name__ == "__main__":
    main()
