"""The README's links into docs/ resolve, and the CLI page names every command.

`make docs` (mkdocs build --strict) checks the links between the docs pages; the
README is outside the site, so its links are checked here.
"""

from __future__ import annotations

import re
from pathlib import Path

from markdown.extensions.toc import slugify

from shardctl.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
CLI_PAGE = DOCS / "cli.md"

# [text](target): the target up to the closing parenthesis, with no spaces.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$")


def relative_links(markdown_text: str) -> list[str]:
    """Every link target that is not a URL (scheme:...)."""
    return [
        target
        for target in LINK.findall(markdown_text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)
    ]


def heading_anchors(page: Path) -> set[str]:
    """The anchors mkdocs gives the page's headings (outside code fences)."""
    anchors: set[str] = set()
    in_fence = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        match = HEADING.match(line)
        if match and not in_fence:
            anchors.add(slugify(match.group(1).replace("`", ""), "-"))
    return anchors


def test_readme_links_point_to_existing_docs_pages() -> None:
    links = relative_links(README.read_text(encoding="utf-8"))
    assert links, "README.md has no relative links: the list of docs pages is gone"
    problems = []
    for link in links:
        path_part, _, anchor = link.partition("#")
        target = (ROOT / path_part).resolve()
        if not path_part or not target.is_relative_to(DOCS):
            problems.append(f"{link}: not a page under docs/")
        elif not target.is_file():
            problems.append(f"{link}: {target.relative_to(ROOT)} does not exist")
        elif anchor and anchor not in heading_anchors(target):
            problems.append(f"{link}: no heading with anchor #{anchor} in {path_part}")
    assert not problems, "README.md links that do not resolve:\n" + "\n".join(problems)


def registered_command_names() -> list[str]:
    """The names of the command groups and top-level commands of the typer app."""
    names: list[str | None] = [group.name for group in app.registered_groups]
    names += [command.name for command in app.registered_commands]
    unnamed = [name for name in names if not name]
    assert not unnamed, "a command registered in shardctl/cli/main.py has no explicit name"
    return [name for name in names if name]


def test_cli_page_names_every_command_group() -> None:
    group_names = [group.name for group in app.registered_groups]
    assert group_names, "no command group found on the typer app of shardctl/cli/main.py"
    page = CLI_PAGE.read_text(encoding="utf-8")
    missing = [
        name
        for name in registered_command_names()
        if not re.search(rf"`shardctl {re.escape(name)}\b", page)
    ]
    assert not missing, f"commands missing from docs/cli.md: {', '.join(missing)}"


def test_relative_links_finds_only_local_targets() -> None:
    text = "[a](docs/cli.md) [b](https://example.org/x) [c](docs/x.md#y) [d](mailto:a@b)"
    assert relative_links(text) == ["docs/cli.md", "docs/x.md#y"]


def test_heading_anchors_skip_code_fences(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Shard offsets: `shardctl offsets describe|reset`\n```\n# a comment\n```\n",
        encoding="utf-8",
    )
    assert heading_anchors(page) == {"shard-offsets-shardctl-offsets-describereset"}
