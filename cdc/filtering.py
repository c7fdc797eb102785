"""Maxwell's filter syntax: which tables and rows the reader publishes.

    filter = "exclude: db.*, include: db.tbl, include: db./^tbl_\\d+$/,
              exclude: db.tbl.col=val, include: *.*.status=/^ok/, blacklist: bad_db.*"

Rules are comma separated and apply in order; the last rule that matches
decides, and a row no rule matches is included.

- `include:` / `exclude:` followed by `db.table`. Each name is a literal (exact
  match, may be `backquoted`), `*` (anything) or `/regex/` (Python `re.search`,
  so anchor it with ^...$ for a whole-name match).
- `db.table.column=value` matches rows whose `column` value, as text, matches
  `value` (a literal, `*`, or `/regex/`); `column=null` matches NULL. A column
  rule never decides for a whole table, only for rows that have the column.
- `blacklist:` drops matching tables for good, DDL included; a later include
  cannot bring them back.

Values compare as text: numbers in decimal, strings as they are.
"""

from __future__ import annotations

import decimal
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shardctl.core.config import ConfigError

RuleType = Literal["include", "exclude", "blacklist"]


class FilterSyntaxError(ConfigError):
    """The filter string cannot be parsed; the message points at the rule."""


@dataclass(frozen=True, slots=True)
class Rule:
    type: RuleType
    database: re.Pattern[str]
    table: re.Pattern[str]
    column: str | None = None
    value: re.Pattern[str] | None = None
    value_is_null: bool = False

    def applies_to(self, database: str, table: str) -> bool:
        return bool(self.database.search(database)) and bool(self.table.search(table))


def _split_rules(text: str) -> list[str]:
    """Split on commas that are outside /regex/ and `quotes`."""
    parts: list[str] = []
    current: list[str] = []
    in_regex = in_quote = False
    for ch in text:
        if ch == "`" and not in_regex:
            in_quote = not in_quote
        elif ch == "/" and not in_quote:
            in_regex = not in_regex
        if ch == "," and not in_regex and not in_quote:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if in_regex or in_quote:
        raise FilterSyntaxError(f"cdc.filter: unterminated regex or quote in {text!r}")
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _split_names(text: str, rule: str) -> list[str]:
    """Split `db.table[.column=value]` on dots outside /regex/ and `quotes`."""
    names: list[str] = []
    current: list[str] = []
    in_regex = in_quote = False
    for index, ch in enumerate(text):
        if ch == "`" and not in_regex:
            in_quote = not in_quote
        elif ch == "/" and not in_quote:
            in_regex = not in_regex
        if ch == "." and not in_regex and not in_quote:
            names.append("".join(current))
            current = []
            if len(names) == 2:
                # Everything after the second dot is `column=value`, dots included.
                names.append(text[index + 1 :])
                return names
        else:
            current.append(ch)
    names.append("".join(current))
    if len(names) < 2:
        raise FilterSyntaxError(f"cdc.filter: {rule!r}: expected db.table")
    return names


def _pattern(token: str, rule: str) -> re.Pattern[str]:
    token = token.strip()
    if not token:
        raise FilterSyntaxError(f"cdc.filter: {rule!r}: empty name")
    if token == "*":
        return re.compile("")
    if len(token) >= 2 and token.startswith("/") and token.endswith("/"):
        try:
            return re.compile(token[1:-1])
        except re.error as exc:
            raise FilterSyntaxError(f"cdc.filter: {rule!r}: bad regex {token}: {exc}") from None
    if len(token) >= 2 and token.startswith("`") and token.endswith("`"):
        token = token[1:-1]
    return re.compile("^" + re.escape(token) + "$")


def parse_filter(text: str | None) -> list[Rule]:
    rules: list[Rule] = []
    for raw in _split_rules(text or ""):
        kind, sep, body = raw.partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in ("include", "exclude", "blacklist"):
            raise FilterSyntaxError(
                f"cdc.filter: {raw!r}: a rule starts with include:, exclude: or blacklist:"
            )
        names = _split_names(body.strip(), raw)
        database, table = _pattern(names[0], raw), _pattern(names[1], raw)
        if len(names) == 2:
            rules.append(Rule(kind, database, table))  # type: ignore[arg-type]
            continue
        if kind == "blacklist":
            raise FilterSyntaxError(f"cdc.filter: {raw!r}: blacklist takes no column value")
        column, eq, value = names[2].partition("=")
        if not eq or not column.strip():
            raise FilterSyntaxError(f"cdc.filter: {raw!r}: expected db.table.column=value")
        value = value.strip()
        rules.append(
            Rule(
                kind,  # type: ignore[arg-type]
                database,
                table,
                column=column.strip().strip("`"),
                value=_pattern(value, raw),
                value_is_null=value.lower() == "null",
            )
        )
    return rules


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    return str(value)


class Filter:
    """Evaluates parsed rules; see the module docstring."""

    def __init__(self, text: str | None = None) -> None:
        self.rules = parse_filter(text)
        self._table_cache: dict[tuple[str, str], tuple[bool, bool]] = {}

    def is_blacklisted(self, database: str, table: str) -> bool:
        return any(r.type == "blacklist" and r.applies_to(database, table) for r in self.rules)

    def table_decision(self, database: str, table: str) -> tuple[bool, bool]:
        """(included by table rules, some column rule may still change that)."""
        cached = self._table_cache.get((database, table))
        if cached is not None:
            return cached
        if self.is_blacklisted(database, table):
            result = (False, False)
        else:
            include = True
            column_rules = False
            for rule in self.rules:
                if rule.type == "blacklist" or not rule.applies_to(database, table):
                    continue
                if rule.column is None:
                    include = rule.type == "include"
                else:
                    column_rules = True
            result = (include, column_rules)
        self._table_cache[(database, table)] = result
        return result

    def may_include_table(self, database: str, table: str) -> bool:
        """False only when no row of the table can pass: its rows need not be decoded."""
        include, column_rules = self.table_decision(database, table)
        return include or column_rules

    def includes_table(self, database: str, table: str) -> bool:
        """Table-level decision, for DDL and bootstrap requests (column rules ignored)."""
        return self.table_decision(database, table)[0]

    def includes_row(self, database: str, table: str, data: Mapping[str, Any]) -> bool:
        include, column_rules = self.table_decision(database, table)
        if not column_rules:
            return include
        if self.is_blacklisted(database, table):
            return False
        include = True
        for rule in self.rules:
            if rule.type == "blacklist" or not rule.applies_to(database, table):
                continue
            if rule.column is None:
                include = rule.type == "include"
                continue
            if rule.column not in data:
                continue
            value = data[rule.column]
            if rule.value_is_null:
                if value is None or value in ("null", "NULL"):
                    include = rule.type == "include"
            elif value is not None and rule.value is not None and rule.value.search(_text(value)):
                include = rule.type == "include"
        return include
