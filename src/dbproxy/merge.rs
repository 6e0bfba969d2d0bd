//! Merging the rows of a SELECT scattered over shards: ORDER BY over the union, then
//! OFFSET and LIMIT, as one database holding every row would answer.
//!
//! Rows stay in their wire form, text protocol (COM_QUERY) or binary (a prepared
//! statement's EXECUTE); only the ORDER BY cells are decoded. Numbers compare as
//! numbers (by the column's type), everything else by bytes (a binary collation:
//! case-insensitive collations may order ties differently than the server would).

use super::backend::decode_text_row;
use super::sql::{Merge, OrderKey};
use super::wire::{Malformed, Reader};
use std::cmp::Ordering;
use std::ops::Range;

/// How the rows of a result set are encoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rows {
    /// COM_QUERY: each cell a length-encoded string (0xFB = NULL).
    Text,
    /// COM_STMT_EXECUTE: a 0x00 header, a NULL bitmap, then each non-NULL cell in its
    /// type's binary form.
    Binary,
}

/// What the merge needs of a column definition.
struct Column {
    name: String,
    ty: u8,
    unsigned: bool,
}

fn column(def: &[u8]) -> Option<Column> {
    let mut r = Reader::new(def);
    for _ in 0..4 {
        r.lenenc_str().ok()?; // catalog, schema, table, org_table
    }
    let name = String::from_utf8_lossy(r.lenenc_str().ok()??).to_ascii_lowercase();
    r.lenenc_str().ok()?; // org_name
    r.lenenc_int().ok()?; // length of the fixed fields (0x0c)
    r.u16().ok()?; // character set
    r.u32().ok()?; // column length
    let ty = r.u8().ok()?;
    let flags = r.u16().ok()?;
    Some(Column {
        name,
        ty,
        unsigned: flags & 0x20 != 0,
    })
}

/// Whether values of column type `ty` compare as numbers.
fn numeric(ty: u8, rows: Rows) -> bool {
    // DECIMAL, TINY..DOUBLE, LONGLONG, INT24, YEAR, NEWDECIMAL; TIME is rendered as a
    // number of microseconds from binary rows.
    matches!(ty, 0x00..=0x05 | 0x08 | 0x09 | 0x0d | 0xf6) || (rows == Rows::Binary && ty == 0x0b)
}

/// Column name and whether its type is numeric, from a column definition packet.
pub fn column_info(def: &[u8]) -> Option<(String, bool)> {
    column(def).map(|c| {
        let n = numeric(c.ty, Rows::Text);
        (c.name, n)
    })
}

/// The byte range of each cell of a binary-protocol row (None = NULL).
fn binary_cells(p: &[u8], columns: &[Column]) -> Result<Vec<Option<Range<usize>>>, Malformed> {
    let mut r = Reader::new(p);
    if r.u8()? != 0x00 {
        return Err(Malformed("a binary row must start with 0x00"));
    }
    let bitmap = r.bytes((columns.len() + 7 + 2) / 8)?;
    let mut out = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            out.push(None);
            continue;
        }
        let start = r.pos;
        super::prepared::skip_value(&mut r, c.ty)?;
        out.push(Some(start..r.pos));
    }
    if !r.is_empty() {
        return Err(Malformed("a binary row longer than its columns"));
    }
    Ok(out)
}

/// A binary cell as the text the ORDER BY compares (numbers as decimal numbers, dates
/// and datetimes as zero-padded `YYYY-MM-DD hh:mm:ss.ffffff`, TIME as microseconds).
fn binary_key(c: &Column, b: &[u8]) -> String {
    let le = |n: usize| -> u64 {
        let mut v = [0u8; 8];
        let n = n.min(b.len());
        v[..n].copy_from_slice(&b[..n]);
        u64::from_le_bytes(v)
    };
    match c.ty {
        0x01 if c.unsigned => le(1).to_string(),
        0x01 => (le(1) as u8 as i8).to_string(),
        0x02 | 0x0d if c.unsigned => le(2).to_string(),
        0x02 | 0x0d => (le(2) as u16 as i16).to_string(),
        0x03 | 0x09 if c.unsigned => le(4).to_string(),
        0x03 | 0x09 => (le(4) as u32 as i32).to_string(),
        0x08 if c.unsigned => le(8).to_string(),
        0x08 => (le(8) as i64).to_string(),
        0x04 => f32::from_bits(le(4) as u32).to_string(),
        0x05 => f64::from_bits(le(8)).to_string(),
        0x07 | 0x0a | 0x0c | 0x12 => {
            // length, year(2), month, day, hour, minute, second, microseconds(4)
            let v = &b[1.min(b.len())..];
            let at = |i: usize| u64::from(v.get(i).copied().unwrap_or(0));
            let year = at(0) | at(1) << 8;
            let micro = at(7) | at(8) << 8 | at(9) << 16 | at(10) << 24;
            format!(
                "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}.{micro:06}",
                at(2),
                at(3),
                at(4),
                at(5),
                at(6)
            )
        }
        0x0b | 0x13 => {
            // length, negative, days(4), hour, minute, second, microseconds(4)
            let v = &b[1.min(b.len())..];
            let at = |i: usize| i128::from(v.get(i).copied().unwrap_or(0));
            let days = at(1) | at(2) << 8 | at(3) << 16 | at(4) << 24;
            let micro = at(8) | at(9) << 8 | at(10) << 16 | at(11) << 24;
            let total = (((days * 24 + at(5)) * 60 + at(6)) * 60 + at(7)) * 1_000_000 + micro;
            (if at(0) == 1 { -total } else { total }).to_string()
        }
        _ => {
            let mut r = Reader::new(b);
            match r.lenenc_str() {
                Ok(Some(s)) => String::from_utf8_lossy(s).into_owned(),
                _ => String::new(),
            }
        }
    }
}

/// The ORDER BY cells of row `p`.
fn key_cells(
    p: &[u8],
    columns: &[Column],
    keys: &[(usize, bool, bool)],
    rows: Rows,
) -> Result<Vec<Option<String>>, Malformed> {
    match rows {
        Rows::Text => {
            let cells = decode_text_row(p)?;
            Ok(keys
                .iter()
                .map(|(at, _, _)| cells.get(*at).cloned().flatten())
                .collect())
        }
        Rows::Binary => {
            let cells = binary_cells(p, columns)?;
            Ok(keys
                .iter()
                .map(|(at, _, _)| {
                    cells
                        .get(*at)
                        .cloned()
                        .flatten()
                        .map(|r| binary_key(&columns[*at], &p[r]))
                })
                .collect())
        }
    }
}

/// Row `p` with only its first `visible` cells.
fn cut(p: Vec<u8>, columns: &[Column], visible: usize, rows: Rows) -> Result<Vec<u8>, Malformed> {
    match rows {
        Rows::Text => {
            let mut rd = Reader::new(&p);
            for _ in 0..visible {
                rd.lenenc_str()?;
            }
            let end = rd.pos;
            let mut p = p;
            p.truncate(end);
            Ok(p)
        }
        Rows::Binary => {
            // A new NULL bitmap for the visible cells, then their bytes as they were.
            let cells = binary_cells(&p, columns)?;
            let mut out = vec![0u8; 1 + (visible + 7 + 2) / 8];
            for (i, c) in cells.iter().take(visible).enumerate() {
                if c.is_none() {
                    let bit = i + 2;
                    out[1 + bit / 8] |= 1 << (bit % 8);
                }
            }
            for r in cells.into_iter().take(visible).flatten() {
                out.extend_from_slice(&p[r]);
            }
            Ok(out)
        }
    }
}

fn compare(a: Option<&str>, b: Option<&str>, numeric: bool) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        // NULLs first in ascending order, as MySQL sorts them.
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) if numeric => match (x.parse::<i128>(), y.parse::<i128>()) {
            (Ok(p), Ok(q)) => p.cmp(&q),
            _ => {
                let p = x.parse::<f64>().unwrap_or(f64::NAN);
                let q = y.parse::<f64>().unwrap_or(f64::NAN);
                p.partial_cmp(&q).unwrap_or_else(|| x.cmp(y))
            }
        },
        (Some(x), Some(y)) => x.as_bytes().cmp(y.as_bytes()),
    }
}

/// Sorts and cuts `rows` (row payloads encoded as `encoding` says) per `plan`.
pub fn merge(
    columns: &[Vec<u8>],
    rows: Vec<Vec<u8>>,
    plan: &Merge,
    encoding: Rows,
) -> Result<Vec<Vec<u8>>, String> {
    let cols: Vec<Column> = columns
        .iter()
        .map(|c| column(c).ok_or("a shard sent a malformed column definition".to_string()))
        .collect::<Result<_, _>>()?;
    let malformed = |m: Malformed| format!("a shard sent a malformed row: {}", m.0);
    let mut keys = Vec::new();
    for (k, desc) in &plan.order_by {
        let at = match k {
            OrderKey::Position(p) => p.checked_sub(1).filter(|i| *i < cols.len()),
            OrderKey::Name(n) => cols.iter().position(|c| &c.name == n),
        }
        .ok_or_else(|| {
            format!(
                "ORDER BY {} across shards must name a column of the result",
                match k {
                    OrderKey::Name(n) => n.clone(),
                    OrderKey::Position(p) => p.to_string(),
                }
            )
        })?;
        keys.push((at, *desc, numeric(cols[at].ty, encoding)));
    }
    let mut rows = rows;
    if !keys.is_empty() {
        let mut decorated: Vec<(Vec<Option<String>>, Vec<u8>)> = rows
            .into_iter()
            .map(|r| Ok((key_cells(&r, &cols, &keys, encoding).map_err(malformed)?, r)))
            .collect::<Result<_, String>>()?;
        decorated.sort_by(|(a, _), (b, _)| {
            for (i, (_, desc, numeric)) in keys.iter().enumerate() {
                let o = compare(a[i].as_deref(), b[i].as_deref(), *numeric);
                let o = if *desc { o.reverse() } else { o };
                if o != Ordering::Equal {
                    return o;
                }
            }
            Ordering::Equal
        });
        rows = decorated.into_iter().map(|(_, r)| r).collect();
    }
    let skip = usize::try_from(plan.offset).unwrap_or(usize::MAX);
    let take = plan
        .limit
        .map(|l| usize::try_from(l).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX);
    let visible = cols.len().saturating_sub(plan.hidden);
    rows.into_iter()
        .skip(skip)
        .take(take)
        .map(|r| {
            if plan.hidden == 0 {
                Ok(r)
            } else {
                cut(r, &cols, visible, encoding).map_err(malformed)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dbproxy::wire::put_lenenc_str;

    fn coldef(name: &str, ty: u8) -> Vec<u8> {
        let mut p = Vec::new();
        for s in ["def", "db", "t", "t", name, name] {
            put_lenenc_str(&mut p, s.as_bytes());
        }
        p.push(0x0c);
        p.extend_from_slice(&45u16.to_le_bytes());
        p.extend_from_slice(&20u32.to_le_bytes());
        p.push(ty);
        p.extend_from_slice(&[0, 0, 0, 0, 0]);
        p
    }

    fn row(cells: &[Option<&str>]) -> Vec<u8> {
        let mut p = Vec::new();
        for c in cells {
            match c {
                Some(s) => put_lenenc_str(&mut p, s.as_bytes()),
                None => p.push(0xFB),
            }
        }
        p
    }

    #[test]
    fn order_by_numbers_strings_nulls_then_offset_and_limit() {
        let cols = vec![coldef("id", 0x08), coldef("name", 0xfd)];
        assert_eq!(column_info(&cols[0]), Some(("id".into(), true)));
        let rows = vec![
            row(&[Some("10"), Some("b")]),
            row(&[Some("9"), Some("a")]),
            row(&[None, Some("c")]),
            row(&[Some("100"), Some("a")]),
        ];
        let plan = |order_by, limit, offset| Merge {
            order_by,
            limit,
            offset,
            shard_sql: String::new(),
            hidden: 0,
            ..Default::default()
        };
        let ids = |rows: Vec<Vec<u8>>| -> Vec<Option<String>> {
            rows.iter()
                .map(|r| decode_text_row(r).unwrap()[0].clone())
                .collect()
        };
        let asc = merge(
            &cols,
            rows.clone(),
            &plan(vec![(OrderKey::Name("id".into()), false)], None, 0),
            Rows::Text,
        )
        .unwrap();
        assert_eq!(
            ids(asc),
            vec![
                None,
                Some("9".into()),
                Some("10".into()),
                Some("100".into())
            ]
        );
        let by_name_desc_then_id = merge(
            &cols,
            rows.clone(),
            &plan(
                vec![
                    (OrderKey::Position(2), true),
                    (OrderKey::Name("id".into()), false),
                ],
                Some(2),
                1,
            ),
            Rows::Text,
        )
        .unwrap();
        assert_eq!(
            ids(by_name_desc_then_id),
            vec![Some("10".into()), Some("9".into())]
        );
        for bad in [OrderKey::Name("nope".into()), OrderKey::Position(3)] {
            assert!(merge(
                &cols,
                rows.clone(),
                &plan(vec![(bad, false)], None, 0),
                Rows::Text
            )
            .is_err());
        }
    }

    /// A binary row: header, NULL bitmap (offset 2), then the non-NULL cells.
    fn brow(cells: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut p = vec![0u8; 1 + (cells.len() + 9) / 8];
        for (i, c) in cells.iter().enumerate() {
            match c {
                Some(b) => p.extend_from_slice(b),
                None => p[1 + (i + 2) / 8] |= 1 << ((i + 2) % 8),
            }
        }
        p
    }

    fn s(v: &str) -> Vec<u8> {
        let mut p = Vec::new();
        put_lenenc_str(&mut p, v.as_bytes());
        p
    }

    fn datetime(y: u16, mo: u8, d: u8, h: u8, mi: u8, sec: u8) -> Vec<u8> {
        let mut p = vec![7];
        p.extend_from_slice(&y.to_le_bytes());
        p.extend_from_slice(&[mo, d, h, mi, sec]);
        p
    }

    #[test]
    fn binary_rows_sort_by_their_types_and_hidden_columns_are_cut() {
        // id BIGINT, name VARCHAR, at DATETIME, n INT (a hidden ORDER BY column).
        let cols = vec![
            coldef("id", 0x08),
            coldef("name", 0xfd),
            coldef("at", 0x0c),
            coldef("__tessera_order_0", 0x03),
        ];
        let rows = vec![
            brow(&[
                Some(10i64.to_le_bytes().to_vec()),
                Some(s("b")),
                Some(datetime(2026, 1, 2, 3, 4, 5)),
                Some((-5i32).to_le_bytes().to_vec()),
            ]),
            brow(&[
                Some((-3i64).to_le_bytes().to_vec()),
                None,
                Some(datetime(2025, 12, 31, 0, 0, 0)),
                Some(7i32.to_le_bytes().to_vec()),
            ]),
            brow(&[
                Some(200i64.to_le_bytes().to_vec()),
                Some(s("a")),
                None,
                Some(1i32.to_le_bytes().to_vec()),
            ]),
        ];
        let plan = |key: OrderKey, desc: bool, hidden: usize| Merge {
            order_by: vec![(key, desc)],
            limit: None,
            offset: 0,
            shard_sql: String::new(),
            hidden,
            ..Default::default()
        };
        let ids = |rows: &[Vec<u8>], n: usize| -> Vec<i64> {
            let c: Vec<Column> = cols[..n].iter().map(|d| column(d).unwrap()).collect();
            rows.iter()
                .map(|r| {
                    let cells = binary_cells(r, &c).unwrap();
                    let at = cells[0].clone().unwrap();
                    i64::from_le_bytes(r[at].try_into().unwrap())
                })
                .collect()
        };
        // Signed numbers as numbers (-3 < 10 < 200, not by bytes).
        let by_id = merge(
            &cols,
            rows.clone(),
            &plan(OrderKey::Name("id".into()), false, 0),
            Rows::Binary,
        )
        .unwrap();
        assert_eq!(ids(&by_id, 4), vec![-3, 10, 200]);
        // Datetimes in time order, NULL first.
        let by_at = merge(
            &cols,
            rows.clone(),
            &plan(OrderKey::Name("at".into()), false, 0),
            Rows::Binary,
        )
        .unwrap();
        assert_eq!(ids(&by_at, 4), vec![200, -3, 10]);
        // By the hidden column, descending; the rows lose it and keep their NULLs.
        let by_hidden = merge(
            &cols,
            rows.clone(),
            &plan(OrderKey::Name("__tessera_order_0".into()), true, 1),
            Rows::Binary,
        )
        .unwrap();
        assert_eq!(ids(&by_hidden, 3), vec![-3, 200, 10]);
        let c3: Vec<Column> = cols[..3].iter().map(|d| column(d).unwrap()).collect();
        let cells = binary_cells(&by_hidden[0], &c3).unwrap();
        assert!(cells[1].is_none() && cells[2].is_some(), "{cells:?}");
        assert!(binary_cells(&by_hidden[1], &c3).unwrap()[2].is_none());
        // A truncated row is an error, not a panic.
        let mut short = rows[0].clone();
        short.truncate(short.len() - 2);
        assert!(merge(
            &cols,
            vec![short],
            &plan(OrderKey::Name("id".into()), false, 0),
            Rows::Binary
        )
        .is_err());
    }
}
