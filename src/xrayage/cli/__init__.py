"""Command-line interface: ``xrayage SUBCOMMAND``. Each subcommand lives in its own module."""
