"""One module per CLI subcommand (see lorastudio/cli.py for the contract)."""
