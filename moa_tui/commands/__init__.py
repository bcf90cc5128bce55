"""One module per `moa` command. Each takes typed options (cli.py builds them) and returns an exit code."""
