"""Decoders for single binlog values, from MySQL's documented row formats.

Every reader takes the row bytes and an offset and returns `(value, next_offset)`.
They are strict: a value outside what the server can write (month 13, a decimal
group above 999999999, an ENUM index past the list, bytes that are not valid
text in the column's charset) raises ValueError instead of being guessed at.
Values come out JSON-ready, the way Maxwell prints them: dates and times as
strings, binary as base64, DECIMAL as decimal.Decimal.
"""

from __future__ import annotations

import binascii
import struct
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

Reader = Callable[[bytes, int], tuple[Any, int]]

_DIGITS_TO_BYTES = (0, 1, 1, 2, 2, 3, 3, 4, 4, 4)
_POW10 = tuple(10**i for i in range(10))
# "00".."99": a lookup is several times cheaper than a `:02d` format, once per field.
_TWO_DIGITS = tuple(f"{n:02d}" for n in range(100))
_FLOAT32 = struct.Struct("<f")


def _need(buf: bytes, p: int, n: int) -> None:
    if p + n > len(buf):
        raise ValueError(f"truncated: need {n} bytes at offset {p}, have {len(buf) - p}")


# --- numbers -----------------------------------------------------------------


def make_decimal_reader(precision: int, scale: int) -> Reader:
    """Reader of MySQL's packed DECIMAL: groups of 9 digits in 4 bytes, big-endian,
    leftover digits in the fewest bytes, the sign in the top bit, negative values
    stored with every bit inverted."""
    if not 0 < precision <= 65 or not 0 <= scale <= 30 or scale > precision:
        raise ValueError(f"DECIMAL({precision},{scale}) is not a valid type")
    intg = precision - scale
    # (digits, bytes) of each group, most significant first.
    groups: list[tuple[int, int]] = []
    if intg % 9:
        groups.append((intg % 9, _DIGITS_TO_BYTES[intg % 9]))
    groups += [(9, 4)] * (intg // 9)
    int_groups = len(groups)
    groups += [(9, 4)] * (scale // 9)
    if scale % 9:
        groups.append((scale % 9, _DIGITS_TO_BYTES[scale % 9]))
    size = sum(nbytes for _, nbytes in groups)
    sign_bit = 1 << (size * 8 - 1)
    all_ones = (1 << (size * 8)) - 1
    # (shift, mask) per group, to cut the whole number into groups.
    cuts: list[tuple[int, int]] = []
    shift = size * 8
    for _, nbytes in groups:
        shift -= nbytes * 8
        cuts.append((shift, (1 << (nbytes * 8)) - 1))
    int_fmt = "".join(f"%0{digits}d" for digits, _ in groups[:int_groups]) or "0"
    frac_fmt = "".join(f"%0{digits}d" for digits, _ in groups[int_groups:])
    fmt = int_fmt + ("." + frac_fmt if frac_fmt else "")
    # A group over its digit count (e.g. 1000000000 in 9 digits) makes the text
    # longer than this: one length check validates every group.
    text_length = len(fmt % ((0,) * len(groups)))

    # The reader is generated for this precision and scale: one shift and mask per
    # digit group, no loop.
    groups_code = ", ".join(f"(v >> {s}) & {m}" for s, m in cuts)
    source = "\n".join(
        [
            "def read_decimal(buf, p):",
            f"    raw = buf[p:p + {size}]",
            f"    if len(raw) != {size}:",
            f"        raise ValueError('truncated DECIMAL({precision},{scale})')",
            "    v = _from_bytes(raw, 'big')",
            f"    if v & {sign_bit}:",
            f"        v ^= {sign_bit}",
            f"        text = {fmt!r} % ({groups_code},)",
            "    else:",
            f"        v ^= {all_ones ^ sign_bit}",
            f"        text = '-' + {fmt!r} % ({groups_code},)",
            f"    if len(text) != {text_length} + (text[0] == '-'):",
            f"        raise ValueError('DECIMAL({precision},{scale}) digit group out of range')",
            f"    return _Decimal(text), p + {size}",
        ]
    )
    namespace: dict[str, Any] = {"_from_bytes": int.from_bytes, "_Decimal": Decimal}
    exec(compile(source, f"<DECIMAL({precision},{scale}) reader>", "exec"), namespace)
    read_decimal: Reader = namespace["read_decimal"]
    return read_decimal


def float32_value(value: float) -> float:
    """The shortest decimal that reads back as the same 32-bit float (what a MySQL
    client prints for FLOAT), as a Python float."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"FLOAT value {value!r} has no JSON form")
    packed = _FLOAT32.pack(value)
    # If p significant digits read back as the same float, so do p + 1: search.
    low, high = 1, 9
    best = value
    while low <= high:
        digits = (low + high) // 2
        candidate = float(f"{value:.{digits}g}")
        if _FLOAT32.pack(candidate) == packed:
            best, high = candidate, digits - 1
        else:
            low = digits + 1
    return best


def double_value(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"DOUBLE value {value!r} has no JSON form")
    return value


def read_year(buf: bytes, p: int) -> tuple[int, int]:
    _need(buf, p, 1)
    year = buf[p]
    return (year + 1900 if year else 0), p + 1


def make_bit_reader(bits: int) -> Reader:
    nbytes = (bits + 7) // 8
    limit = 1 << bits

    def read_bit(buf: bytes, p: int) -> tuple[int, int]:
        _need(buf, p, nbytes)
        value = int.from_bytes(buf[p : p + nbytes], "big")
        if value >= limit:
            raise ValueError(f"BIT({bits}) value {value} has too many bits")
        return value, p + nbytes

    return read_bit


def make_enum_reader(values: tuple[str, ...], size: int) -> Reader:
    """ENUM: a 1- or 2-byte index into the values; index 0 is the empty string
    MySQL stores for an invalid value."""
    if size not in (1, 2):
        raise ValueError(f"ENUM storage size {size} is not 1 or 2")

    def read_enum(buf: bytes, p: int) -> tuple[str, int]:
        _need(buf, p, size)
        index = int.from_bytes(buf[p : p + size], "little")
        if index >= len(values):
            raise ValueError(f"ENUM index {index} past the {len(values) - 1} values")
        return values[index], p + size

    return read_enum


def make_set_reader(values: tuple[str, ...], size: int) -> Reader:
    """SET: a bit mask of 1 to 8 bytes, little-endian; the members in definition order."""
    if not 1 <= size <= 8:
        raise ValueError(f"SET storage size {size} is not in 1..8")
    limit = 1 << len(values)
    members = tuple(enumerate(values))

    def read_set(buf: bytes, p: int) -> tuple[list[str], int]:
        _need(buf, p, size)
        mask = int.from_bytes(buf[p : p + size], "little")
        if mask >= limit:
            raise ValueError(f"SET mask {mask:#x} has bits past the {len(values)} members")
        return [name for bit, name in members if mask >> bit & 1], p + size

    return read_set


# --- dates and times -----------------------------------------------------------


def _fraction_reader(fsp: int) -> Callable[[bytes, int], int]:
    """Microseconds from the 0-3 fractional bytes that follow DATETIME2, TIMESTAMP2."""
    if not 0 <= fsp <= 6:
        raise ValueError(f"fractional seconds precision {fsp} is not in 0..6")
    nbytes = (fsp + 1) // 2
    scale = (1, 10000, 100, 1)[nbytes]
    limit = (1, 100, 10000, 1000000)[nbytes]
    unit = _POW10[6 - fsp]

    def read_fraction(buf: bytes, p: int) -> int:
        raw = int.from_bytes(buf[p : p + nbytes], "big")
        if raw >= limit:
            raise ValueError(f"fractional seconds {raw} out of range")
        micros = raw * scale
        if micros % unit:
            raise ValueError(f"fractional seconds {micros}us finer than precision {fsp}")
        return micros

    return read_fraction


def fraction_text(micros: int, fsp: int) -> str:
    if not fsp:
        return ""
    return "." + str(micros // _POW10[6 - fsp]).rjust(fsp, "0")


def _check_clock(hour: int, minute: int, second: int, max_hour: int = 23) -> None:
    if hour > max_hour or minute > 59 or second > 59:
        raise ValueError(f"time {hour}:{minute}:{second} out of range")


def _check_date(year: int, month: int, day: int) -> None:
    if year > 9999 or month > 12 or day > 31:
        raise ValueError(f"date {year}-{month}-{day} out of range")


def date_text(year: int, month: int, day: int) -> str:
    return f"{year:04d}-{month:02d}-{day:02d}"


def read_date(buf: bytes, p: int) -> tuple[str, int]:
    """DATE: 3 bytes little-endian, day in bits 0-4, month in 5-8, year above."""
    _need(buf, p, 3)
    packed = buf[p] | buf[p + 1] << 8 | buf[p + 2] << 16
    year, month, day = packed >> 9, (packed >> 5) & 15, packed & 31
    _check_date(year, month, day)
    return date_text(year, month, day), p + 3


def make_datetime2_reader(fsp: int) -> Reader:
    """DATETIME2: 5 bytes big-endian with 0x8000000000 added, then the fraction.
    Bits: year*13+month (17), day (5), hour (5), minute (6), second (6)."""
    if not 0 <= fsp <= 6:
        raise ValueError(f"fractional seconds precision {fsp} is not in 0..6")
    nbytes = (fsp + 1) // 2
    size = 5 + nbytes
    frac_bits = 8 * nbytes
    frac_mask = (1 << frac_bits) - 1
    scale = (1, 10000, 100, 1)[nbytes]
    limit = (1, 100, 10000, 1000000)[nbytes]
    unit = _POW10[6 - fsp]
    sign_bit = 0x8000000000 << frac_bits
    # Values of one column often share a day: keep the date text of recent days.
    dates: dict[int, str] = {}
    two = _TWO_DIGITS
    # ".000".."999" for fsp <= 3 (at most 1000 texts); finer ones are formatted.
    fractions = tuple(f".{n:0{fsp}d}" for n in range(10**fsp)) if 0 < fsp <= 3 else ()

    def read_datetime2(buf: bytes, p: int) -> tuple[str, int]:
        end = p + size
        packed = int.from_bytes(buf[p:end], "big")
        if end > len(buf):
            raise ValueError(f"truncated DATETIME({fsp})")
        if not packed & sign_bit:
            raise ValueError("negative DATETIME")
        raw_frac = packed & frac_mask
        packed = (packed >> frac_bits) & 0x7FFFFFFFFF
        ymd = packed >> 17
        date = dates.get(ymd)
        if date is None:
            year, month = divmod(ymd >> 5, 13)
            day = ymd & 31
            _check_date(year, month, day)
            date = f"{year:04d}-{month:02d}-{day:02d} "
            if len(dates) > 1024:
                dates.clear()
            dates[ymd] = date
        hour, minute, second = (packed >> 12) & 31, (packed >> 6) & 63, packed & 63
        if hour > 23 or minute > 59 or second > 59:
            raise ValueError(f"time {hour}:{minute}:{second} out of range")
        if not fsp:
            return f"{date}{two[hour]}:{two[minute]}:{two[second]}", end
        if raw_frac >= limit:
            raise ValueError(f"fractional seconds {raw_frac} out of range")
        micros = raw_frac * scale
        if micros % unit:
            raise ValueError(f"fractional seconds {micros}us finer than precision {fsp}")
        fraction = (
            fractions[micros // unit] if fractions else "." + str(micros // unit).rjust(fsp, "0")
        )
        return f"{date}{two[hour]}:{two[minute]}:{two[second]}{fraction}", end

    return read_datetime2


def utc_text(seconds: int) -> str:
    """UTC date-time of epoch seconds; TIMESTAMP 0 is the zero date."""
    if seconds == 0:
        return "0000-00-00 00:00:00"
    tm = time.gmtime(seconds)
    return (
        f"{tm.tm_year:04d}-{tm.tm_mon:02d}-{tm.tm_mday:02d} "
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
    )


def make_timestamp2_reader(fsp: int) -> Reader:
    """TIMESTAMP2: 4 bytes big-endian epoch seconds, then the fraction; printed in
    UTC (the server stores UTC, so no timezone shift is applied)."""
    read_fraction = _fraction_reader(fsp)
    size = 4 + (fsp + 1) // 2

    def read_timestamp2(buf: bytes, p: int) -> tuple[str, int]:
        _need(buf, p, size)
        seconds = int.from_bytes(buf[p : p + 4], "big")
        micros = read_fraction(buf, p + 4)
        return utc_text(seconds) + fraction_text(micros, fsp), p + size

    return read_timestamp2


def time_text(negative: bool, hour: int, minute: int, second: int, micros: int, fsp: int) -> str:
    sign = "-" if negative else ""
    return f"{sign}{hour:02d}:{minute:02d}:{second:02d}" + fraction_text(micros, fsp)


def make_time2_reader(fsp: int) -> Reader:
    """TIME2: 3 bytes big-endian with 0x800000 added (sign, unused bit, hour 10,
    minute 6, second 6), then the fraction; negative values are two's complement
    across integer and fraction, as in MySQL's my_time_packed_from_binary."""
    if not 0 <= fsp <= 6:
        raise ValueError(f"fractional seconds precision {fsp} is not in 0..6")
    nbytes = (fsp + 1) // 2
    size = 3 + nbytes
    unit = _POW10[6 - fsp]

    def read_time2(buf: bytes, p: int) -> tuple[str, int]:
        _need(buf, p, size)
        if nbytes == 3:
            packed = int.from_bytes(buf[p : p + 6], "big") - 0x800000000000
        else:
            intpart = int.from_bytes(buf[p : p + 3], "big") - 0x800000
            frac = int.from_bytes(buf[p + 3 : p + size], "big")
            if intpart < 0 and frac:
                intpart += 1
                frac -= 1 << (8 * nbytes)
            packed = (intpart << 24) + frac * (1, 10000, 100)[nbytes]
        negative = packed < 0
        packed = -packed if negative else packed
        hms, micros = packed >> 24, packed & 0xFFFFFF
        hour, minute, second = (hms >> 12) & 0x3FF, (hms >> 6) & 63, hms & 63
        if micros >= 1000000 or micros % unit:
            raise ValueError(f"TIME fraction {micros}us out of range for precision {fsp}")
        _check_clock(hour, minute, second, max_hour=838)
        return time_text(negative, hour, minute, second, micros, fsp), p + size

    return read_time2


def read_datetime_v1(buf: bytes, p: int) -> tuple[str, int]:
    """Old DATETIME: 8 bytes little-endian holding the decimal YYYYMMDDhhmmss."""
    _need(buf, p, 8)
    packed = int.from_bytes(buf[p : p + 8], "little")
    ymd, hms = divmod(packed, 1000000)
    year, md = divmod(ymd, 10000)
    month, day = divmod(md, 100)
    hour, ms = divmod(hms, 10000)
    minute, second = divmod(ms, 100)
    _check_date(year, month, day)
    _check_clock(hour, minute, second)
    return f"{date_text(year, month, day)} {hour:02d}:{minute:02d}:{second:02d}", p + 8


def read_time_v1(buf: bytes, p: int) -> tuple[str, int]:
    """Old TIME: 3 bytes little-endian signed, the decimal hhmmss."""
    _need(buf, p, 3)
    packed = int.from_bytes(buf[p : p + 3], "little", signed=True)
    negative = packed < 0
    hour, ms = divmod(abs(packed), 10000)
    minute, second = divmod(ms, 100)
    _check_clock(hour, minute, second, max_hour=838)
    return time_text(negative, hour, minute, second, 0, 0), p + 3


def read_timestamp_v1(buf: bytes, p: int) -> tuple[str, int]:
    """Old TIMESTAMP: 4 bytes little-endian epoch seconds, printed in UTC."""
    _need(buf, p, 4)
    return utc_text(int.from_bytes(buf[p : p + 4], "little")), p + 4


# --- text and binary -------------------------------------------------------------

# MySQL's latin1 is Windows-1252, except that the five bytes 1252 leaves undefined
# map to the C1 control characters of the same value.
_CP1252_HIGH = bytes(range(0x80, 0xA0)).decode("cp1252", errors="replace")
LATIN1_TABLE = {0x80 + i: ch for i, ch in enumerate(_CP1252_HIGH) if ch != "\ufffd"}


def decode_latin1(raw: bytes) -> str:
    return raw.decode("latin-1").translate(LATIN1_TABLE)


def base64_text(raw: bytes) -> str:
    return binascii.b2a_base64(raw, newline=False).decode("ascii")


# Python codecs for MySQL character sets. A charset missing here stops the
# decoder when a table using it is first seen, rather than producing mojibake.
PYTHON_CODECS: dict[str, str] = {
    "utf8mb4": "utf-8",
    "utf8mb3": "utf-8",
    "utf8": "utf-8",
    "ascii": "ascii",
    "latin2": "iso8859-2",
    "latin5": "iso8859-9",
    "latin7": "iso8859-13",
    "greek": "iso8859-7",
    "hebrew": "iso8859-8",
    "cp1250": "cp1250",
    "cp1251": "cp1251",
    "cp1256": "cp1256",
    "cp1257": "cp1257",
    "cp850": "cp850",
    "cp852": "cp852",
    "cp866": "cp866",
    "koi8r": "koi8-r",
    "koi8u": "koi8-u",
    "big5": "big5",
    "gbk": "gbk",
    "gb2312": "gb2312",
    "gb18030": "gb18030",
    "sjis": "shift_jis",
    "cp932": "cp932",
    "ujis": "euc_jp",
    "eucjpms": "euc_jp",
    "euckr": "euc_kr",
    "tis620": "tis-620",
    "ucs2": "utf-16-be",
    "utf16": "utf-16-be",
    "utf16le": "utf-16-le",
    "utf32": "utf-32-be",
}


def text_decoder(charset: str) -> Callable[[bytes], str]:
    """The strict bytes->str function for a MySQL character set."""
    if charset == "latin1":
        return decode_latin1
    codec = PYTHON_CODECS.get(charset)
    if codec is None:
        raise ValueError(f"character set {charset!r} is not supported")

    def decode_text(raw: bytes) -> str:
        return raw.decode(codec)

    return decode_text
