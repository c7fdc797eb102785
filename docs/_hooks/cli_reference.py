"""mkdocs hook: generate cli-reference.md from the typer app at every build.

The page comes from `typer ... utils docs`, so it lists exactly the commands and
options that `shardctl --help` shows and cannot fall behind the code.
"""

from __future__ import annotations

import subprocess
import sys

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

PAGE = "cli-reference.md"
COMMAND = [
    sys.executable,
    "-m",
    "typer",
    "--app",
    "app",
    "shardctl.cli.main",
    "utils",
    "docs",
    "--name",
    "shardctl",
    "--title",
    "CLI reference",
]


def on_files(files: Files, config: MkDocsConfig) -> Files:
    result = subprocess.run(COMMAND, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PluginError(
            f"generating {PAGE} with `{' '.join(COMMAND[1:])}` failed "
            f"(exit {result.returncode}): {result.stderr.strip()}"
        )
    files.append(File.generated(config, PAGE, content=result.stdout))
    return files
