//! The compiled fast path of the shardctl CDC reader.
//!
//! A `RowLayout` is built once per table layout from column specs that the Python
//! side (`cdc.decoding.native`) derives from the table definition. `decode` then
//! reads every row of a rows event body and returns, per row, the JSON text of
//! Maxwell's `data` object, the JSON texts of the primary key values and, for
//! updates, the `old` object (and the whole before image when the primary key
//! changed). The texts are byte for byte what the Python reference decoder and
//! formatter write (`cdc.decoding.values`, `cdc.json_text`); the differential
//! tests hold the two to it.
//!
//! Any value the server cannot have written (truncated row, month 13, a DECIMAL
//! digit group out of range, bytes that are not text in the column's charset, a
//! non-finite DOUBLE) raises ValueError: the caller then decodes the event with
//! the Python path, which names the binlog position, table and column.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};
use std::fmt::Write as _;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int { width: usize, unsigned: bool },
    Year,
    Bit { bits: u32 },
    Double,
    Decimal,
    Date,
    DateTime2 { fsp: u32 },
    Timestamp2 { fsp: u32 },
    Time2 { fsp: u32 },
    Enum { size: usize },
    Set { size: usize },
    Utf8 { prefix: usize },
    ByteTable { prefix: usize },
    Binary { prefix: usize, width: usize },
}

struct DecimalPlan {
    size: usize,
    // (digits, bytes) per group, most significant first.
    groups: Vec<(u32, usize)>,
    int_groups: usize,
}

struct Column {
    name: String,
    // `{"name":` for the first column, `,"name":` for the others.
    key: String,
    kind: Kind,
    zero_date: bool,
    // JSON texts of the ENUM or SET members.
    members: Vec<String>,
    // Single-byte charsets: the JSON-escaped text of each byte (None: not text).
    table: Vec<Option<String>>,
    decimal: Option<DecimalPlan>,
}

type ColumnSpec = (
    String,
    String,
    String,
    i64,
    i64,
    Vec<String>,
    Option<Vec<Option<String>>>,
);

const DIGITS_TO_BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];
const POW10: [u64; 10] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

fn err<T>(column: &str, reason: impl std::fmt::Display) -> Result<T, String> {
    Err(format!("column {column:?}: {reason}"))
}

fn decimal_plan(precision: i64, scale: i64) -> Result<DecimalPlan, String> {
    if !(1..=65).contains(&precision) || !(0..=30).contains(&scale) || scale > precision {
        return Err(format!("DECIMAL({precision},{scale}) is not a valid type"));
    }
    let intg = (precision - scale) as usize;
    let scale = scale as usize;
    let mut groups = Vec::new();
    if !intg.is_multiple_of(9) {
        groups.push(((intg % 9) as u32, DIGITS_TO_BYTES[intg % 9]));
    }
    for _ in 0..intg / 9 {
        groups.push((9, 4));
    }
    let int_groups = groups.len();
    for _ in 0..scale / 9 {
        groups.push((9, 4));
    }
    if !scale.is_multiple_of(9) {
        groups.push(((scale % 9) as u32, DIGITS_TO_BYTES[scale % 9]));
    }
    let size = groups.iter().map(|g| g.1).sum();
    Ok(DecimalPlan {
        size,
        groups,
        int_groups,
    })
}

fn parse_kind(kind: &str, a: i64, b: i64) -> Result<Kind, String> {
    let fsp = |v: i64| -> Result<u32, String> {
        if (0..=6).contains(&v) {
            Ok(v as u32)
        } else {
            Err(format!("fractional seconds precision {v} is not in 0..6"))
        }
    };
    let prefix = |v: i64| -> Result<usize, String> {
        if (1..=4).contains(&v) {
            Ok(v as usize)
        } else {
            Err(format!("length prefix {v} is not in 1..4"))
        }
    };
    Ok(match kind {
        "int" if matches!(a, 1 | 2 | 3 | 4 | 8) => Kind::Int {
            width: a as usize,
            unsigned: b != 0,
        },
        "year" => Kind::Year,
        "bit" if (1..=64).contains(&a) => Kind::Bit { bits: a as u32 },
        "double" => Kind::Double,
        "decimal" => Kind::Decimal,
        "date" => Kind::Date,
        "datetime2" => Kind::DateTime2 { fsp: fsp(a)? },
        "timestamp2" => Kind::Timestamp2 { fsp: fsp(a)? },
        "time2" => Kind::Time2 { fsp: fsp(a)? },
        "enum" if matches!(a, 1 | 2) => Kind::Enum { size: a as usize },
        "set" if (1..=8).contains(&a) => Kind::Set { size: a as usize },
        "utf8" => Kind::Utf8 { prefix: prefix(a)? },
        "bytes" => Kind::ByteTable { prefix: prefix(a)? },
        "binary" if b >= 0 => Kind::Binary {
            prefix: prefix(a)?,
            width: b as usize,
        },
        _ => return Err(format!("column kind {kind:?} ({a}, {b}) is not supported")),
    })
}

/// One decoded row: the raw JSON text of each value (before the message-form
/// options rewrite it), None for NULL.
#[derive(Default)]
struct RowText {
    text: String,
    spans: Vec<Option<(usize, usize)>>,
}

impl RowText {
    fn get(&self, i: usize) -> Option<&str> {
        self.spans[i].map(|(s, e)| &self.text[s..e])
    }
}

fn push2(out: &mut String, v: u32) {
    out.push((b'0' + (v / 10) as u8) as char);
    out.push((b'0' + (v % 10) as u8) as char);
}

fn push_padded(out: &mut String, v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = v;
    let mut i = 20;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let digits = 20 - i;
    for _ in digits..width {
        out.push('0');
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

fn be(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, &b| acc << 8 | b as u64)
}

fn le(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0u64, |acc, &b| acc << 8 | b as u64)
}

/// JSON string of UTF-8 text, escaped as Python's `json.encoder.encode_basestring`.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.push_str(&s[start..i]);
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            _ => {
                let _ = write!(out, "\\u{:04x}", b);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn push_base64(out: &mut String, raw: &[u8], width: usize) {
    out.push('"');
    let padded;
    let data: &[u8] = if raw.len() < width {
        let mut v = raw.to_vec();
        v.resize(width, 0);
        padded = v;
        &padded
    } else {
        raw
    };
    for chunk in data.chunks(3) {
        let n = chunk.len();
        let v = (chunk[0] as u32) << 16
            | (if n > 1 { chunk[1] as u32 } else { 0 }) << 8
            | (if n > 2 { chunk[2] as u32 } else { 0 });
        out.push(B64[(v >> 18 & 63) as usize] as char);
        out.push(B64[(v >> 12 & 63) as usize] as char);
        out.push(if n > 1 {
            B64[(v >> 6 & 63) as usize] as char
        } else {
            '='
        });
        out.push(if n > 2 {
            B64[(v & 63) as usize] as char
        } else {
            '='
        });
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest digits that read back as the same double,
/// in fixed notation for decimal exponents in -4..16, else `d.ddde+XX`.
fn push_python_float(out: &mut String, x: f64) {
    if x == 0.0 {
        out.push_str(if x.is_sign_negative() { "-0.0" } else { "0.0" });
        return;
    }
    if x < 0.0 {
        out.push('-');
    }
    let sci = format!("{:e}", x.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let decpt = exp + 1;
    if -4 < decpt && decpt <= 16 {
        if decpt <= 0 {
            out.push_str("0.");
            for _ in 0..-decpt {
                out.push('0');
            }
            out.push_str(&digits);
        } else if decpt as usize >= digits.len() {
            out.push_str(&digits);
            for _ in digits.len()..decpt as usize {
                out.push('0');
            }
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exp < 0 { '-' } else { '+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            out.push('0');
        }
        let _ = write!(out, "{e}");
    }
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn fraction(out: &mut String, micros: u64, fsp: u32) {
    if fsp > 0 {
        out.push('.');
        push_padded(out, micros / POW10[6 - fsp as usize], fsp as usize);
    }
}

/// Microseconds of the 0-3 fractional bytes of DATETIME2 and TIMESTAMP2.
fn read_fraction(raw: u64, nbytes: usize, fsp: u32) -> Result<u64, String> {
    let scale = [1u64, 10_000, 100, 1][nbytes];
    let limit = [1u64, 100, 10_000, 1_000_000][nbytes];
    if raw >= limit {
        return Err(format!("fractional seconds {raw} out of range"));
    }
    let micros = raw * scale;
    if !micros.is_multiple_of(POW10[6 - fsp as usize]) {
        return Err(format!(
            "fractional seconds {micros}us finer than precision {fsp}"
        ));
    }
    Ok(micros)
}

#[pyclass(frozen, module = "shardctl_native")]
struct RowLayout {
    columns: Vec<Column>,
    primary_key: Vec<usize>,
    null_zerodates: bool,
    decimal_as_string: bool,
}

impl RowLayout {
    fn take<'a>(body: &'a [u8], p: &mut usize, n: usize) -> Option<&'a [u8]> {
        let end = p.checked_add(n)?;
        let s = body.get(*p..end)?;
        *p = end;
        Some(s)
    }

    /// Appends the raw JSON text of one non-NULL value at `p` to `out`.
    fn value(
        &self,
        col: &Column,
        body: &[u8],
        p: &mut usize,
        out: &mut String,
    ) -> Result<(), String> {
        let name = col.name.as_str();
        macro_rules! take {
            ($n:expr, $what:expr) => {
                match Self::take(body, p, $n) {
                    Some(s) => s,
                    None => return err(name, concat!("truncated ", $what)),
                }
            };
        }
        match col.kind {
            Kind::Int { width, unsigned } => {
                let raw = le(take!(width, "integer"));
                if unsigned {
                    let _ = write!(out, "{raw}");
                } else {
                    let shift = 64 - 8 * width as u32;
                    let v = ((raw << shift) as i64) >> shift;
                    let _ = write!(out, "{v}");
                }
            }
            Kind::Year => {
                let y = take!(1, "YEAR")[0] as u32;
                let _ = write!(out, "{}", if y == 0 { 0 } else { y + 1900 });
            }
            Kind::Bit { bits } => {
                let raw = take!((bits as usize).div_ceil(8), "BIT");
                let v = be(raw);
                if bits < 64 && v >= 1u64 << bits {
                    return err(name, format!("BIT({bits}) value {v} has too many bits"));
                }
                let _ = write!(out, "{v}");
            }
            Kind::Double => {
                let raw = take!(8, "DOUBLE");
                let x = f64::from_le_bytes(raw.try_into().map_err(|_| "DOUBLE".to_string())?);
                if !x.is_finite() {
                    return err(name, "DOUBLE is not finite");
                }
                push_python_float(out, x);
            }
            Kind::Decimal => {
                let plan = col.decimal.as_ref().ok_or("DECIMAL without a plan")?;
                let raw = take!(plan.size, "DECIMAL");
                let mut b = [0u8; 40];
                let b = &mut b[..plan.size];
                b.copy_from_slice(raw);
                let negative = b[0] & 0x80 == 0;
                if negative {
                    for x in b.iter_mut() {
                        *x = !*x;
                    }
                    b[0] &= 0x7f;
                } else {
                    b[0] ^= 0x80;
                }
                if negative {
                    out.push('-');
                }
                let mut at = 0;
                let mut leading = true;
                for (g, &(digits, nbytes)) in plan.groups.iter().enumerate() {
                    let v = be(&b[at..at + nbytes]);
                    at += nbytes;
                    if v >= POW10[digits as usize] {
                        return err(name, "DECIMAL digit group out of range");
                    }
                    if g == plan.int_groups {
                        if leading {
                            out.push('0');
                            leading = false;
                        }
                        out.push('.');
                    }
                    if leading {
                        if v != 0 {
                            let _ = write!(out, "{v}");
                            leading = false;
                        }
                    } else {
                        push_padded(out, v, digits as usize);
                    }
                }
                if leading {
                    out.push('0');
                }
            }
            Kind::Date => {
                let raw = take!(3, "DATE");
                let packed = le(raw) as u32;
                let (year, month, day) = (packed >> 9, (packed >> 5) & 15, packed & 31);
                if year > 9999 || month > 12 || day > 31 {
                    return err(name, format!("date {year}-{month}-{day} out of range"));
                }
                out.push('"');
                push_padded(out, year as u64, 4);
                out.push('-');
                push2(out, month);
                out.push('-');
                push2(out, day);
                out.push('"');
            }
            Kind::DateTime2 { fsp } => {
                let nbytes = (fsp as usize).div_ceil(2);
                let raw = take!(5 + nbytes, "DATETIME");
                let int_part = be(&raw[..5]);
                if int_part & 0x80_0000_0000 == 0 {
                    return err(name, "negative DATETIME");
                }
                let int_part = int_part & 0x7F_FFFF_FFFF;
                let micros = read_fraction(be(&raw[5..]), nbytes, fsp).or_else(|e| err(name, e))?;
                let ymd = int_part >> 17;
                let (year, month, day) = ((ymd >> 5) / 13, (ymd >> 5) % 13, ymd & 31);
                if year > 9999 || month > 12 || day > 31 {
                    return err(name, format!("date {year}-{month}-{day} out of range"));
                }
                let (hour, minute, second) =
                    ((int_part >> 12) & 31, (int_part >> 6) & 63, int_part & 63);
                if hour > 23 || minute > 59 || second > 59 {
                    return err(name, format!("time {hour}:{minute}:{second} out of range"));
                }
                out.push('"');
                push_padded(out, year, 4);
                out.push('-');
                push2(out, month as u32);
                out.push('-');
                push2(out, day as u32);
                out.push(' ');
                push2(out, hour as u32);
                out.push(':');
                push2(out, minute as u32);
                out.push(':');
                push2(out, second as u32);
                fraction(out, micros, fsp);
                out.push('"');
            }
            Kind::Timestamp2 { fsp } => {
                let nbytes = (fsp as usize).div_ceil(2);
                let raw = take!(4 + nbytes, "TIMESTAMP");
                let seconds = be(&raw[..4]) as i64;
                let micros = read_fraction(be(&raw[4..]), nbytes, fsp).or_else(|e| err(name, e))?;
                out.push('"');
                if seconds == 0 {
                    out.push_str("0000-00-00 00:00:00");
                } else {
                    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
                    let rem = seconds.rem_euclid(86_400) as u32;
                    push_padded(out, year as u64, 4);
                    out.push('-');
                    push2(out, month);
                    out.push('-');
                    push2(out, day);
                    out.push(' ');
                    push2(out, rem / 3600);
                    out.push(':');
                    push2(out, rem / 60 % 60);
                    out.push(':');
                    push2(out, rem % 60);
                }
                fraction(out, micros, fsp);
                out.push('"');
            }
            Kind::Time2 { fsp } => {
                let nbytes = (fsp as usize).div_ceil(2);
                let raw = take!(3 + nbytes, "TIME");
                let packed: i64 = if nbytes == 3 {
                    be(&raw[..6]) as i64 - 0x8000_0000_0000
                } else {
                    let mut int_part = be(&raw[..3]) as i64 - 0x80_0000;
                    let mut frac = be(&raw[3..]) as i64;
                    if int_part < 0 && frac != 0 {
                        int_part += 1;
                        frac -= 1i64 << (8 * nbytes);
                    }
                    (int_part << 24) + frac * [1i64, 10_000, 100][nbytes]
                };
                let negative = packed < 0;
                let packed = packed.unsigned_abs();
                let (hms, micros) = (packed >> 24, packed & 0xFF_FFFF);
                let (hour, minute, second) = ((hms >> 12) & 0x3FF, (hms >> 6) & 63, hms & 63);
                if micros >= 1_000_000 || micros % POW10[6 - fsp as usize] != 0 {
                    return err(
                        name,
                        format!("TIME fraction {micros}us out of range for precision {fsp}"),
                    );
                }
                if hour > 838 || minute > 59 || second > 59 {
                    return err(name, format!("time {hour}:{minute}:{second} out of range"));
                }
                out.push('"');
                if negative {
                    out.push('-');
                }
                push_padded(out, hour, 2);
                out.push(':');
                push2(out, minute as u32);
                out.push(':');
                push2(out, second as u32);
                fraction(out, micros, fsp);
                out.push('"');
            }
            Kind::Enum { size } => {
                let index = le(take!(size, "ENUM")) as usize;
                match col.members.get(index) {
                    Some(member) => out.push_str(member),
                    None => return err(name, format!("ENUM index {index} past the values")),
                }
            }
            Kind::Set { size } => {
                let mask = le(take!(size, "SET"));
                let count = col.members.len();
                if count < 64 && mask >= 1u64 << count {
                    return err(
                        name,
                        format!("SET mask {mask:#x} has bits past the members"),
                    );
                }
                out.push('[');
                let mut first = true;
                for (bit, member) in col.members.iter().enumerate() {
                    if mask >> bit & 1 == 1 {
                        if !first {
                            out.push(',');
                        }
                        first = false;
                        out.push_str(member);
                    }
                }
                out.push(']');
            }
            Kind::Utf8 { prefix } => {
                let length = le(take!(prefix, "length")) as usize;
                let raw = take!(length, "value");
                match std::str::from_utf8(raw) {
                    Ok(text) => push_json_str(out, text),
                    Err(e) => return err(name, format!("not utf-8: {e}")),
                }
            }
            Kind::ByteTable { prefix } => {
                let length = le(take!(prefix, "length")) as usize;
                let raw = take!(length, "value");
                out.push('"');
                for &b in raw {
                    match &col.table[b as usize] {
                        Some(text) => out.push_str(text),
                        None => return err(name, format!("byte {b:#04x} is not text")),
                    }
                }
                out.push('"');
            }
            Kind::Binary { prefix, width } => {
                let length = le(take!(prefix, "length")) as usize;
                let raw = take!(length, "value");
                if width > 0 && raw.len() > width {
                    return err(
                        name,
                        format!("BINARY({width}) value of {} bytes", raw.len()),
                    );
                }
                push_base64(out, raw, width);
            }
        }
        Ok(())
    }

    fn read_row(&self, body: &[u8], p: &mut usize, row: &mut RowText) -> Result<(), String> {
        let count = self.columns.len();
        let nulls = match Self::take(body, p, count.div_ceil(8)) {
            Some(s) => s,
            None => return err("(null bitmap)", "truncated row"),
        };
        row.text.clear();
        row.spans.clear();
        for (i, col) in self.columns.iter().enumerate() {
            if nulls[i >> 3] >> (i & 7) & 1 == 1 {
                row.spans.push(None);
                continue;
            }
            let start = row.text.len();
            self.value(col, body, p, &mut row.text)?;
            row.spans.push(Some((start, row.text.len())));
        }
        Ok(())
    }

    /// The value as the message writes it (the message-form options applied).
    fn emit(&self, col: &Column, raw: Option<&str>, out: &mut String) {
        match raw {
            None => out.push_str("null"),
            Some(text)
                if self.null_zerodates && col.zero_date && text.starts_with("\"0000-00-00") =>
            {
                out.push_str("null")
            }
            Some(text) if self.decimal_as_string && col.kind == Kind::Decimal => {
                out.push('"');
                out.push_str(text);
                out.push('"');
            }
            Some(text) => out.push_str(text),
        }
    }

    fn object(&self, row: &RowText, out: &mut String) {
        for (i, col) in self.columns.iter().enumerate() {
            out.push_str(&col.key);
            self.emit(col, row.get(i), out);
        }
        out.push_str(if self.columns.is_empty() { "{}" } else { "}" });
    }

    fn pk<'py>(&self, py: Python<'py>, row: &RowText) -> PyResult<Bound<'py, PyTuple>> {
        let mut texts = Vec::with_capacity(self.primary_key.len());
        let mut buf = String::new();
        for &i in &self.primary_key {
            buf.clear();
            self.emit(&self.columns[i], row.get(i), &mut buf);
            texts.push(PyString::new(py, &buf));
        }
        PyTuple::new(py, texts)
    }
}

/// Equal as Python compares the decoded values: -0.0 == 0.0, Decimal -0.00 == 0.00.
fn same_value(col: &Column, a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            x == y
                || (matches!(col.kind, Kind::Double | Kind::Decimal)
                    && strip_negative_zero(x) == strip_negative_zero(y))
        }
        _ => false,
    }
}

fn strip_negative_zero(text: &str) -> &str {
    match text.strip_prefix('-') {
        Some(rest) if rest.bytes().all(|b| b == b'0' || b == b'.') => rest,
        _ => text,
    }
}

#[pymethods]
impl RowLayout {
    /// `columns`: (name, JSON text of the name, kind, a, b, member JSON texts,
    /// byte table) per column, in table order; `primary_key`: column indexes.
    #[new]
    fn new(
        columns: Vec<ColumnSpec>,
        primary_key: Vec<usize>,
        null_zerodates: bool,
        decimal_as_string: bool,
    ) -> PyResult<Self> {
        let mut cols = Vec::with_capacity(columns.len());
        for (i, (name, name_json, kind, a, b, members, table)) in columns.into_iter().enumerate() {
            let parsed = parse_kind(&kind, a, b).map_err(PyValueError::new_err)?;
            let decimal = if parsed == Kind::Decimal {
                Some(decimal_plan(a, b).map_err(PyValueError::new_err)?)
            } else {
                None
            };
            let table = match (parsed, table) {
                (Kind::ByteTable { .. }, Some(t)) if t.len() == 256 => t,
                (Kind::ByteTable { .. }, _) => {
                    return Err(PyValueError::new_err("a byte table needs 256 entries"))
                }
                _ => Vec::new(),
            };
            if matches!(parsed, Kind::Enum { .. } | Kind::Set { .. }) && members.is_empty() {
                return Err(PyValueError::new_err(format!(
                    "column {name:?} has no members"
                )));
            }
            cols.push(Column {
                key: format!("{}{}:", if i == 0 { "{" } else { "," }, name_json),
                zero_date: matches!(
                    parsed,
                    Kind::Date | Kind::DateTime2 { .. } | Kind::Timestamp2 { .. }
                ),
                name,
                kind: parsed,
                members,
                table,
                decimal,
            });
        }
        if let Some(&bad) = primary_key.iter().find(|&&i| i >= cols.len()) {
            return Err(PyValueError::new_err(format!(
                "primary key column {bad} out of range"
            )));
        }
        Ok(RowLayout {
            columns: cols,
            primary_key,
            null_zerodates,
            decimal_as_string,
        })
    }

    /// Every row of a rows event body whose rows carry every column.
    ///
    /// Inserts and deletes: `(data, primary_key)`; updates: `(data, primary_key,
    /// old, before, before_primary_key)` where `before` and `before_primary_key`
    /// are None unless the update changed a primary key column.
    fn decode<'py>(
        &self,
        py: Python<'py>,
        update: bool,
        body: &[u8],
    ) -> PyResult<Bound<'py, PyList>> {
        let rows = PyList::empty(py);
        let mut p = 0usize;
        let n = body.len();
        let mut after = RowText::default();
        let mut before = RowText::default();
        let mut data = String::with_capacity(256);
        let mut old = String::with_capacity(64);
        let mut changed = vec![false; self.columns.len()];
        while p < n {
            if !update {
                self.read_row(body, &mut p, &mut after)
                    .map_err(PyValueError::new_err)?;
                data.clear();
                self.object(&after, &mut data);
                let item = (PyString::new(py, &data), self.pk(py, &after)?);
                rows.append(item)?;
                continue;
            }
            self.read_row(body, &mut p, &mut before)
                .map_err(PyValueError::new_err)?;
            self.read_row(body, &mut p, &mut after)
                .map_err(PyValueError::new_err)?;
            data.clear();
            self.object(&after, &mut data);
            old.clear();
            old.push('{');
            for (i, col) in self.columns.iter().enumerate() {
                changed[i] = !same_value(col, before.get(i), after.get(i));
                if changed[i] {
                    if old.len() > 1 {
                        old.push(',');
                    }
                    old.push_str(&col.key[1..]);
                    self.emit(col, before.get(i), &mut old);
                }
            }
            old.push('}');
            let key_changed = self.primary_key.iter().any(|&i| changed[i]);
            let (before_text, before_pk) = if key_changed {
                // The whole row before the update; columns that compare equal take
                // the after value, as the Python path builds it from `old` and `data`.
                let mut whole = RowText::default();
                for (i, &column_changed) in changed.iter().enumerate() {
                    let src = if column_changed { &before } else { &after };
                    let start = whole.text.len();
                    match src.get(i) {
                        Some(t) => {
                            whole.text.push_str(t);
                            whole.spans.push(Some((start, whole.text.len())));
                        }
                        None => whole.spans.push(None),
                    }
                }
                let mut text = String::new();
                self.object(&whole, &mut text);
                (Some(PyString::new(py, &text)), Some(self.pk(py, &whole)?))
            } else {
                (None, None)
            };
            let item = (
                PyString::new(py, &data),
                self.pk(py, &after)?,
                PyString::new(py, &old),
                before_text,
                before_pk,
            );
            rows.append(item)?;
        }
        Ok(rows)
    }

    #[getter]
    fn column_count(&self) -> usize {
        self.columns.len()
    }
}

#[pymodule]
fn shardctl_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RowLayout>()?;
    Ok(())
}
