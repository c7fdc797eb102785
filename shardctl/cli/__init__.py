"""The `shardctl` command line (typer)."""
