//! Server-side prepared statements through the proxy.
//!
//! The client sees the proxy's statement ids. A statement is prepared on a backend
//! connection the first time it runs there (each held connection maps the proxy's ids
//! to its own), so EXECUTE can go to whichever shard its parameters pick: the shard key
//! may be a `?`, whose value is read from the EXECUTE packet (binary protocol).

use super::wire::{Malformed, Reader};

/// A statement prepared by a client.
pub struct Prepared {
    /// Shared, as is the analysis: every EXECUTE takes them (a clone of the parsed
    /// statement per EXECUTE cost a quarter of the proxy's CPU under sysbench).
    pub sql: std::sync::Arc<str>,
    /// None when sqlparser cannot parse it (then it runs where it was prepared).
    pub analysis: Option<std::sync::Arc<super::sql::Analysis>>,
    pub params: u16,
    /// Parameter types from the last EXECUTE that sent them ((type, flags) pairs).
    pub types: Vec<[u8; 2]>,
    /// COM_STMT_SEND_LONG_DATA chunks, replayed before the next EXECUTE.
    pub long_data: Vec<Vec<u8>>,
}

/// The fixed part of a COM_STMT_PREPARE_OK: (statement id, columns, params).
pub fn parse_prepare_ok(p: &[u8]) -> Result<(u32, u16, u16), Malformed> {
    let mut r = Reader::new(p);
    if r.u8()? != 0 {
        return Err(Malformed("not a COM_STMT_PREPARE_OK"));
    }
    let id = r.u32()?;
    let cols = r.u16()?;
    let params = r.u16()?;
    Ok((id, cols, params))
}

/// The statement id of a COM_STMT_EXECUTE/CLOSE/RESET/SEND_LONG_DATA payload.
pub fn stmt_id(p: &[u8]) -> Result<u32, Malformed> {
    let mut r = Reader::new(p);
    r.u8()?;
    r.u32()
}

/// A copy of `p` with its statement id (bytes 1..5) replaced.
pub fn with_stmt_id(p: &[u8], id: u32) -> Vec<u8> {
    let mut out = p.to_vec();
    if out.len() >= 5 {
        out[1..5].copy_from_slice(&id.to_le_bytes());
    }
    out
}

/// An EXECUTE for a backend connection: the connection's statement id, and the
/// parameter types the client bound put back when this EXECUTE leaves them out (a
/// client sends them once after binding, and a connection that prepared the statement
/// later has never seen them). `no_cursor` clears the cursor flags, for a SELECT that
/// is read whole to be merged.
pub fn exec_for_backend(
    p: &[u8],
    backend_id: u32,
    nparams: usize,
    types: &[[u8; 2]],
    no_cursor: bool,
) -> Vec<u8> {
    let mut out = with_stmt_id(p, backend_id);
    if no_cursor && out.len() > 5 {
        out[5] = 0;
    }
    let at = 10 + nparams.div_ceil(8);
    if nparams == 0 || types.len() != nparams || out.get(at) != Some(&0) {
        return out;
    }
    let mut with = Vec::with_capacity(out.len() + 2 * nparams);
    with.extend_from_slice(&out[..at]);
    with.push(1);
    for t in types {
        with.extend_from_slice(t);
    }
    with.extend_from_slice(&out[at + 1..]);
    with
}

/// The EXECUTE `p` (of `nparams` parameters bound with `types`) with its parameters
/// from `kept` on replaced by one unsigned LONGLONG `value`, types sent: what a shard's
/// statement takes whose trailing `LIMIT ?` stands for the client's LIMIT and OFFSET
/// parameters (the statement's last ones).
pub fn with_trailing_limit(
    p: &[u8],
    nparams: usize,
    types: &[[u8; 2]],
    kept: usize,
    value: u64,
) -> Result<Vec<u8>, Malformed> {
    let mut r = Reader::new(p);
    let head = r.bytes(10)?;
    let bitmap = r.bytes(nparams.div_ceil(8))?.to_vec();
    let types: Vec<[u8; 2]> = if r.u8()? == 1 {
        r.bytes(2 * nparams)?
            .chunks(2)
            .map(|c| [c[0], c[1]])
            .collect()
    } else {
        types.to_vec()
    };
    if types.len() != nparams || kept > nparams {
        return Err(Malformed("EXECUTE without parameter types"));
    }
    let null = |i: usize| bitmap[i / 8] & (1 << (i % 8)) != 0;
    let mut values = Vec::new();
    for (i, [ty, _]) in types.iter().enumerate() {
        if null(i) {
            continue;
        }
        let start = r.pos;
        skip_value(&mut r, *ty)?;
        if i < kept {
            values.extend_from_slice(&p[start..r.pos]);
        }
    }
    let mut out = head.to_vec();
    let mut nulls = vec![0u8; (kept + 1).div_ceil(8)];
    for i in (0..kept).filter(|i| null(*i)) {
        nulls[i / 8] |= 1 << (i % 8);
    }
    out.extend_from_slice(&nulls);
    out.push(1);
    for t in &types[..kept] {
        out.extend_from_slice(t);
    }
    out.extend_from_slice(&[0x08, 0x80]);
    out.extend_from_slice(&values);
    out.extend_from_slice(&value.to_le_bytes());
    Ok(out)
}

/// Moves past one value of column or parameter type `ty` (binary protocol): fixed-size
/// numbers; DATE, DATETIME, TIMESTAMP, TIME as a length byte and that many bytes;
/// everything else (strings, decimals, blobs, JSON, enums, sets, bit) length-encoded.
pub(super) fn skip_value(r: &mut Reader, ty: u8) -> Result<(), Malformed> {
    match ty {
        0x01 => drop(r.bytes(1)?),
        0x02 | 0x0d => drop(r.bytes(2)?),
        0x03 | 0x09 | 0x04 => drop(r.bytes(4)?),
        0x08 | 0x05 => drop(r.bytes(8)?),
        0x06 => {}
        0x07 | 0x0a | 0x0b | 0x0c | 0x11 | 0x12 | 0x13 => {
            let n = r.u8()? as usize;
            r.bytes(n)?;
        }
        _ => drop(r.lenenc_str()?),
    }
    Ok(())
}

/// The parameter values of an EXECUTE as text (None = NULL, or a type that cannot be a
/// shard key such as a date). `types` holds the types the client bound last time; they
/// are updated when this EXECUTE binds new ones.
pub fn exec_params(
    p: &[u8],
    nparams: usize,
    types: &mut Vec<[u8; 2]>,
) -> Result<Vec<Option<String>>, Malformed> {
    if nparams == 0 {
        return Ok(Vec::new());
    }
    let mut r = Reader::new(p);
    r.bytes(1 + 4 + 1 + 4)?;
    let bitmap = r.bytes(nparams.div_ceil(8))?.to_vec();
    if r.u8()? == 1 {
        let raw = r.bytes(2 * nparams)?;
        *types = raw.chunks(2).map(|c| [c[0], c[1]]).collect();
    }
    if types.len() != nparams {
        return Err(Malformed("EXECUTE without parameter types"));
    }
    let mut out = Vec::with_capacity(nparams);
    for (i, [ty, flags]) in types.iter().enumerate() {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            out.push(None);
            continue;
        }
        let unsigned = flags & 0x80 != 0;
        let v = match ty {
            0x01 => {
                let b = r.u8()?;
                Some(if unsigned {
                    b.to_string()
                } else {
                    (b as i8).to_string()
                })
            }
            0x02 | 0x0d => {
                let v = r.u16()?;
                Some(if unsigned {
                    v.to_string()
                } else {
                    (v as i16).to_string()
                })
            }
            0x03 | 0x09 => {
                let v = r.u32()?;
                Some(if unsigned {
                    v.to_string()
                } else {
                    (v as i32).to_string()
                })
            }
            0x08 => {
                let b = r.bytes(8)?;
                let v = u64::from_le_bytes(b.try_into().map_err(|_| Malformed("truncated"))?);
                Some(if unsigned {
                    v.to_string()
                } else {
                    (v as i64).to_string()
                })
            }
            0x04 => {
                let b = r.bytes(4)?;
                Some(f32::from_le_bytes([b[0], b[1], b[2], b[3]]).to_string())
            }
            0x05 => {
                let b = r.bytes(8)?;
                Some(
                    f64::from_le_bytes(b.try_into().map_err(|_| Malformed("truncated"))?)
                        .to_string(),
                )
            }
            0x06 => None, // MYSQL_TYPE_NULL: no bytes
            // DATE, DATETIME, TIMESTAMP, TIME: a length byte, then that many bytes.
            0x07 | 0x0a | 0x0b | 0x0c | 0x11 | 0x12 | 0x13 => {
                let n = r.u8()? as usize;
                r.bytes(n)?;
                None
            }
            // Strings, decimals, blobs, JSON, enums, sets, bit, geometry: length-encoded.
            _ => r
                .lenenc_str()?
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        };
        out.push(v);
    }
    Ok(out)
}

/// The placeholder marker [`super::sql`] puts where a shard-key value is the `n`th `?`.
pub fn marker(n: usize) -> String {
    format!("\0?{n}")
}

/// The parameter index a marker names.
pub fn marker_index(v: &str) -> Option<usize> {
    v.strip_prefix("\0?")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execute(id: u32, types: Option<&[[u8; 2]]>, nulls: u8, values: &[u8]) -> Vec<u8> {
        let mut p = vec![0x17];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(0);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(nulls);
        match types {
            Some(t) => {
                p.push(1);
                for x in t {
                    p.extend_from_slice(x);
                }
            }
            None => p.push(0),
        }
        p.extend_from_slice(values);
        p
    }

    #[test]
    fn an_execute_without_types_gets_them_back_for_the_backend() {
        let types = [[0x08, 0], [0xfd, 0]];
        let mut values = 7u64.to_le_bytes().to_vec();
        values.extend_from_slice(&[2, b'h', b'i']);
        let first = execute(9, Some(&types), 0, &values);
        let later = execute(9, None, 0, &values);
        // The later EXECUTE, for a backend: the types are back and the bytes match the
        // first one's but for the statement id.
        let mut want = first.clone();
        want[1..5].copy_from_slice(&44u32.to_le_bytes());
        assert_eq!(exec_for_backend(&later, 44, 2, &types, false), want);
        assert_eq!(exec_for_backend(&first, 44, 2, &types, false), want);
        // The cursor flag is cleared when asked.
        let mut cursor = later.clone();
        cursor[5] = 1;
        assert_eq!(exec_for_backend(&cursor, 44, 2, &types, true), want);
        // Nothing to add without parameters, or without the types (the server answers).
        let none = execute(9, None, 0, &[]);
        assert_eq!(
            exec_for_backend(&none[..10], 3, 0, &[], false)[1..5],
            3u32.to_le_bytes()
        );
        assert_eq!(
            exec_for_backend(&later, 44, 2, &[], false).len(),
            later.len()
        );
        // A truncated packet is passed on as it is, never a panic.
        assert_eq!(exec_for_backend(&later[..8], 44, 2, &types, false).len(), 8);
    }

    #[test]
    fn trailing_limit_parameters_become_one_for_the_shards() {
        // (name VARCHAR, limit LONG, offset LONG), name NULL-free.
        let types = [[0xfd, 0], [0x03, 0], [0x03, 0]];
        let mut values = vec![2, b'h', b'i'];
        values.extend_from_slice(&10u32.to_le_bytes());
        values.extend_from_slice(&5u32.to_le_bytes());
        let p = execute(9, Some(&types), 0, &values);
        let out = with_trailing_limit(&p, 3, &types, 1, 15).unwrap();
        let mut want = vec![0x17];
        want.extend_from_slice(&9u32.to_le_bytes());
        want.push(0);
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&[0, 1, 0xfd, 0, 0x08, 0x80, 2, b'h', b'i']);
        want.extend_from_slice(&15u64.to_le_bytes());
        assert_eq!(out, want);
        // Types bound earlier; a NULL kept parameter stays NULL.
        let later = execute(9, None, 0b001, &values[3..]);
        let out = with_trailing_limit(&later, 3, &types, 1, 15).unwrap();
        assert_eq!(&out[10..14], &[0b1, 1, 0xfd, 0]);
        assert_eq!(&out[16..], &15u64.to_le_bytes());
        // Truncated: an error, not a panic.
        assert!(with_trailing_limit(&p[..p.len() - 2], 3, &types, 1, 15).is_err());
        assert!(with_trailing_limit(&later, 3, &[], 1, 15).is_err());
    }

    #[test]
    fn parameters_decode_by_type_and_types_are_remembered() {
        let mut values = Vec::new();
        values.extend_from_slice(&(-5i64).to_le_bytes()); // LONGLONG signed
        values.extend_from_slice(&7u32.to_le_bytes()); // LONG unsigned
        values.extend_from_slice(&[3, b'a', b'b', b'c']); // VAR_STRING
        values.extend_from_slice(&[4, 1, 2, 3, 4]); // DATE (4 bytes)
        let types = [[0x08, 0], [0x03, 0x80], [0xfd, 0], [0x0a, 0], [0x08, 0]];
        let mut remembered = Vec::new();
        // The fifth parameter is NULL (bit 4 of the bitmap).
        let p = execute(9, Some(&types), 0b1_0000, &values);
        assert_eq!(stmt_id(&p).unwrap(), 9);
        let v = exec_params(&p, 5, &mut remembered).unwrap();
        assert_eq!(
            v,
            vec![
                Some("-5".into()),
                Some("7".into()),
                Some("abc".into()),
                None,
                None
            ]
        );
        // A later EXECUTE may omit the types.
        let p = execute(9, None, 0b1_0000, &values);
        assert_eq!(
            exec_params(&p, 5, &mut remembered).unwrap()[2].as_deref(),
            Some("abc")
        );
        assert!(exec_params(&p, 5, &mut Vec::new()).is_err());
        assert_eq!(stmt_id(&with_stmt_id(&p, 77)).unwrap(), 77);
        assert_eq!(marker_index(&marker(3)), Some(3));
    }

    #[test]
    fn truncated_and_random_executes_are_errors_not_panics() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..crate::dbproxy::wire::fuzz_iterations(5000) {
            let p: Vec<u8> = (0..rng.usize(0..40)).map(|_| rng.u8(..)).collect();
            let mut t = Vec::new();
            let _ = exec_params(&p, rng.usize(0..6), &mut t);
            let _ = parse_prepare_ok(&p);
            let _ = stmt_id(&p);
        }
    }
}
