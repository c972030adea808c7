"""The `avmae` command line: subcommands that load lazily, so `--help` needs no torch or Ray."""
