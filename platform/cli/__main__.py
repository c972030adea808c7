"""`python -m avmae.platform.cli`: the same as the `avmae` command."""

from avmae.platform.cli.main import main

main()
