//! Merging the rows of a SELECT scattered over shards: ORDER BY over the union, then
//! OFFSET and LIMIT, as one database holding every row would answer.
//!
//! Rows stay in their wire form; only the ORDER BY cells are decoded. Numbers compare
//! as numbers (by the column's type), everything else by bytes (a binary collation:
//! case-insensitive collations may order ties differently than the server would).

use super::backend::decode_text_row;
use super::sql::{Merge, OrderKey};
use super::wire::Reader;
use std::cmp::Ordering;

/// Column name and whether its type is numeric, from a column definition packet.
pub fn column_info(def: &[u8]) -> Option<(String, bool)> {
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
    let numeric = matches!(ty, 0x00..=0x05 | 0x08 | 0x09 | 0x0d | 0xf6);
    Some((name, numeric))
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

/// Sorts and cuts `rows` (text-protocol row payloads) per `plan`.
pub fn merge(
    columns: &[Vec<u8>],
    rows: Vec<Vec<u8>>,
    plan: &Merge,
) -> Result<Vec<Vec<u8>>, String> {
    let info: Vec<(String, bool)> = columns
        .iter()
        .map(|c| column_info(c).ok_or("a shard sent a malformed column definition".to_string()))
        .collect::<Result<_, _>>()?;
    let mut keys = Vec::new();
    for (k, desc) in &plan.order_by {
        let at = match k {
            OrderKey::Position(p) => p.checked_sub(1).filter(|i| *i < info.len()),
            OrderKey::Name(n) => info.iter().position(|(c, _)| c == n),
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
        keys.push((at, *desc, info[at].1));
    }
    let mut rows = rows;
    if !keys.is_empty() {
        let mut decorated: Vec<(Vec<Option<String>>, Vec<u8>)> = rows
            .into_iter()
            .map(|r| {
                let cells = decode_text_row(&r)
                    .map_err(|m| format!("a shard sent a malformed row: {}", m.0))?;
                let k = keys
                    .iter()
                    .map(|(at, _, _)| cells.get(*at).cloned().flatten())
                    .collect();
                Ok((k, r))
            })
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
    let visible = columns.len().saturating_sub(plan.hidden);
    rows.into_iter()
        .skip(skip)
        .take(take)
        .map(|r| {
            if plan.hidden == 0 {
                return Ok(r);
            }
            // Cut the row after its visible cells.
            let mut rd = Reader::new(&r);
            for _ in 0..visible {
                rd.lenenc_str()
                    .map_err(|m| format!("a shard sent a malformed row: {}", m.0))?;
            }
            let end = rd.pos;
            let mut r = r;
            r.truncate(end);
            Ok(r)
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
        )
        .unwrap();
        assert_eq!(
            ids(by_name_desc_then_id),
            vec![Some("10".into()), Some("9".into())]
        );
        assert!(merge(
            &cols,
            rows.clone(),
            &plan(vec![(OrderKey::Name("nope".into()), false)], None, 0)
        )
        .is_err());
        assert!(merge(
            &cols,
            rows,
            &plan(vec![(OrderKey::Position(3), false)], None, 0)
        )
        .is_err());
    }
}
