//! The MySQL client/server protocol as far as the proxy speaks it: packet framing,
//! handshake v10 and its response, OK/ERR/EOF packets, length-encoded values, and the
//! password scrambles of `mysql_native_password` and `caching_sha2_password`.
//!
//! Everything here is a pure function over bytes (fuzzed by `tests` below and by the
//! packet parsers' property tests); the async I/O lives in `session.rs` and
//! `backend.rs`.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

pub mod cap {
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const COMPRESS: u32 = 1 << 5;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC: u32 = 1 << 21;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;

    /// What the proxy offers clients and asks of backends. Result sets keep the classic
    /// EOF framing (no DEPRECATE_EOF) and no session tracking, so a backend's response
    /// is valid for any client as it is: that is what lets results pass through
    /// undecoded. No compression, no LOCAL INFILE, no multi-statements (each statement
    /// is routed on its own).
    pub const PROXY: u32 = LONG_PASSWORD
        | LONG_FLAG
        | CONNECT_WITH_DB
        | IGNORE_SPACE
        | PROTOCOL_41
        | INTERACTIVE
        | TRANSACTIONS
        | SECURE_CONNECTION
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC;
}

pub const SERVER_STATUS_IN_TRANS: u16 = 0x0001;
pub const SERVER_STATUS_AUTOCOMMIT: u16 = 0x0002;
pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// An EXECUTE opened a cursor: its rows come with COM_STMT_FETCH.
pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;

/// utf8mb4_general_ci: known to MySQL 5.5+ and every MariaDB.
pub const UTF8MB4_GENERAL_CI: u8 = 45;

pub const NATIVE: &str = "mysql_native_password";
pub const SHA2: &str = "caching_sha2_password";

pub mod com {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;
}

/// Error codes and SQLSTATEs the proxy answers with (the server's own numbers, so
/// clients and their retry logic understand them).
pub mod er {
    pub const HANDSHAKE: (u16, &str) = (1043, "08S01");
    pub const ACCESS_DENIED: (u16, &str) = (1045, "28000");
    pub const NO_DB: (u16, &str) = (1046, "3D000");
    pub const UNKNOWN_COM: (u16, &str) = (1047, "08S01");
    pub const BAD_DB: (u16, &str) = (1049, "42000");
    pub const PARSE: (u16, &str) = (1064, "42000");
    pub const UNKNOWN: (u16, &str) = (1105, "HY000");
    pub const NET_PACKET_TOO_LARGE: (u16, &str) = (1153, "08S01");
    pub const WRONG_ARGUMENTS: (u16, &str) = (1210, "HY000");
    pub const NOT_SUPPORTED_YET: (u16, &str) = (1235, "42000");
    pub const UNKNOWN_STMT_HANDLER: (u16, &str) = (1243, "HY000");
    pub const STMT_HAS_NO_OPEN_CURSOR: (u16, &str) = (1421, "HY000");
    pub const QUERY_INTERRUPTED: (u16, &str) = (1317, "70100");
    pub const CON_COUNT: (u16, &str) = (1040, "08004");
    /// A shard's server cannot be reached. Client-range codes (2013 and the like) must
    /// not travel in an ERR packet: clients read them as a malformed packet.
    pub const UNAVAILABLE: (u16, &str) = UNKNOWN;
}

/// A protocol violation by the peer: answered with ER_HANDSHAKE or a closed connection.
#[derive(Debug, PartialEq)]
pub struct Malformed(pub &'static str);

/// Reads one packet's header and payload into `buf` (cleared first); returns the
/// sequence id. Payloads of exactly 16 MiB - 1 are continued by the next packet: this
/// reads them all into one logical payload, refusing more than `limit` bytes.
pub async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> io::Result<u8> {
    buf.clear();
    let mut first_seq = None;
    loop {
        let mut h = [0u8; 4];
        r.read_exact(&mut h).await?;
        let len = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
        first_seq.get_or_insert(h[3]);
        if buf.len() + len > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                PacketTooLarge(buf.len() + len),
            ));
        }
        let at = buf.len();
        buf.resize(at + len, 0);
        r.read_exact(&mut buf[at..]).await?;
        if len < MAX_PAYLOAD {
            return Ok(first_seq.unwrap_or(0));
        }
    }
}

/// The error inside an `io::Error` when a packet exceeds the limit.
#[derive(Debug)]
pub struct PacketTooLarge(pub usize);

impl std::fmt::Display for PacketTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "packet of {} bytes exceeds max_allowed_packet", self.0)
    }
}
impl std::error::Error for PacketTooLarge {}

/// The payload of command `com` carrying `sql` (COM_QUERY, COM_STMT_PREPARE).
pub fn command(com: u8, sql: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(1 + sql.len());
    p.push(com);
    p.extend_from_slice(sql.as_bytes());
    p
}

/// Appends `payload` framed as one or more packets starting at `seq`; returns the next
/// sequence id.
pub fn frame(out: &mut Vec<u8>, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        out.push(seq);
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return seq;
        }
    }
}

pub fn put_lenenc_int(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=250 => out.push(v as u8),
        251..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

pub fn put_lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A cursor over a payload; every read checks bounds.
pub struct Reader<'a> {
    pub buf: &'a [u8],
    pub pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos.min(self.buf.len())..]
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Malformed("length overflow"))?;
        let s = self.buf.get(self.pos..end).ok_or(Malformed("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.bytes(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A NUL-terminated string (or the rest, when the NUL is missing at the very end).
    pub fn cstr(&mut self) -> Result<&'a [u8], Malformed> {
        let rest = self.rest();
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(Malformed("string without its NUL terminator")),
        }
    }
    /// A length-encoded integer; `None` for the NULL marker 0xFB.
    pub fn lenenc_int(&mut self) -> Result<Option<u64>, Malformed> {
        Ok(Some(match self.u8()? {
            0xFB => return Ok(None),
            0xFC => self.u16()? as u64,
            0xFD => {
                let b = self.bytes(3)?;
                u32::from_le_bytes([b[0], b[1], b[2], 0]) as u64
            }
            0xFE => {
                let b = self.bytes(8)?;
                u64::from_le_bytes(b.try_into().map_err(|_| Malformed("truncated"))?)
            }
            0xFF => return Err(Malformed("0xFF is not a length")),
            n => n as u64,
        }))
    }
    pub fn lenenc_str(&mut self) -> Result<Option<&'a [u8]>, Malformed> {
        match self.lenenc_int()? {
            None => Ok(None),
            Some(n) => {
                let n = usize::try_from(n).map_err(|_| Malformed("length overflow"))?;
                Ok(Some(self.bytes(n)?))
            }
        }
    }
}

/// The server's first packet (handshake v10).
pub fn handshake_v10(conn_id: u32, version: &str, nonce: &[u8; 20], caps: u32) -> Vec<u8> {
    let mut p = vec![10];
    p.extend_from_slice(version.as_bytes());
    p.push(0);
    p.extend_from_slice(&conn_id.to_le_bytes());
    p.extend_from_slice(&nonce[..8]);
    p.push(0);
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(UTF8MB4_GENERAL_CI);
    p.extend_from_slice(&SERVER_STATUS_AUTOCOMMIT.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(&nonce[8..]);
    p.push(0);
    p.extend_from_slice(NATIVE.as_bytes());
    p.push(0);
    p
}

/// What a server's handshake v10 says (the proxy reads its backends').
#[derive(Debug, PartialEq)]
pub struct ServerHello {
    pub version: String,
    pub conn_id: u32,
    pub caps: u32,
    pub nonce: Vec<u8>,
    pub plugin: String,
}

pub fn parse_handshake_v10(p: &[u8]) -> Result<ServerHello, Malformed> {
    let mut r = Reader::new(p);
    if r.u8()? != 10 {
        return Err(Malformed("not a handshake v10"));
    }
    let version = String::from_utf8_lossy(r.cstr()?).into_owned();
    let conn_id = r.u32()?;
    let mut nonce = r.bytes(8)?.to_vec();
    r.u8()?;
    let mut caps = r.u16()? as u32;
    let mut plugin = String::from(NATIVE);
    if !r.is_empty() {
        r.u8()?; // charset
        r.u16()?; // status
        caps |= (r.u16()? as u32) << 16;
        let auth_len = r.u8()? as usize;
        r.bytes(10)?;
        if caps & cap::SECURE_CONNECTION != 0 {
            let n = auth_len.saturating_sub(8).max(13);
            let part = r.bytes(n.min(r.rest().len()))?;
            // The part ends with a NUL that is not part of the nonce.
            let part = part.strip_suffix(&[0]).unwrap_or(part);
            nonce.extend_from_slice(part);
        }
        if caps & cap::PLUGIN_AUTH != 0 && !r.is_empty() {
            let rest = r.rest();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            plugin = String::from_utf8_lossy(&rest[..end]).into_owned();
        }
    }
    Ok(ServerHello {
        version,
        conn_id,
        caps,
        nonce,
        plugin,
    })
}

/// A client's HandshakeResponse41.
#[derive(Debug, PartialEq)]
pub struct ClientHello {
    pub caps: u32,
    pub max_packet: u32,
    pub charset: u8,
    pub user: String,
    pub auth: Vec<u8>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

/// True when the 32-byte packet is an SSLRequest (the client wants TLS before the rest).
pub fn is_ssl_request(p: &[u8]) -> bool {
    p.len() == 32 && u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & cap::SSL != 0
}

pub fn parse_handshake_response(p: &[u8]) -> Result<ClientHello, Malformed> {
    let mut r = Reader::new(p);
    let caps = r.u32()?;
    if caps & cap::PROTOCOL_41 == 0 {
        return Err(Malformed("the client does not speak protocol 4.1"));
    }
    let max_packet = r.u32()?;
    let charset = r.u8()?;
    r.bytes(23)?;
    let user = std::str::from_utf8(r.cstr()?)
        .map_err(|_| Malformed("user name is not UTF-8"))?
        .to_string();
    let auth = if caps & cap::PLUGIN_AUTH_LENENC != 0 {
        r.lenenc_str()?.unwrap_or_default().to_vec()
    } else if caps & cap::SECURE_CONNECTION != 0 {
        let n = r.u8()? as usize;
        r.bytes(n)?.to_vec()
    } else {
        r.cstr()?.to_vec()
    };
    let database = if caps & cap::CONNECT_WITH_DB != 0 && !r.is_empty() {
        let d =
            std::str::from_utf8(r.cstr()?).map_err(|_| Malformed("database name is not UTF-8"))?;
        (!d.is_empty()).then(|| d.to_string())
    } else {
        None
    };
    let plugin = plugin_name(&r, caps);
    // Connection attributes follow; the proxy does not need them.
    Ok(ClientHello {
        caps,
        max_packet,
        charset,
        user,
        auth,
        database,
        plugin,
    })
}

/// The auth plugin a client names at the end of its handshake or change of user.
fn plugin_name(r: &Reader<'_>, caps: u32) -> Option<String> {
    if caps & cap::PLUGIN_AUTH == 0 || r.is_empty() {
        return None;
    }
    let rest = r.rest();
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// A COM_CHANGE_USER request (after its command byte), read with the capabilities the
/// client announced at login.
#[derive(Debug, PartialEq)]
pub struct ChangeUser {
    pub user: String,
    pub auth: Vec<u8>,
    pub database: Option<String>,
    pub charset: Option<u8>,
    pub plugin: Option<String>,
}

pub fn parse_change_user(p: &[u8], caps: u32) -> Result<ChangeUser, Malformed> {
    let mut r = Reader::new(p);
    let user = std::str::from_utf8(r.cstr()?)
        .map_err(|_| Malformed("user name is not UTF-8"))?
        .to_string();
    let auth = if caps & cap::SECURE_CONNECTION != 0 {
        let n = r.u8()? as usize;
        r.bytes(n)?.to_vec()
    } else {
        r.cstr()?.to_vec()
    };
    let db = std::str::from_utf8(r.cstr()?).map_err(|_| Malformed("database name is not UTF-8"))?;
    let database = (!db.is_empty()).then(|| db.to_string());
    let charset = if r.is_empty() {
        None
    } else {
        // Two bytes; only the low one names a character set the proxy knows.
        Some((r.u16()? & 0xff) as u8)
    };
    let plugin = plugin_name(&r, caps);
    Ok(ChangeUser {
        user,
        auth,
        database,
        charset,
        plugin,
    })
}

/// The proxy's HandshakeResponse41 to a backend.
pub fn handshake_response(
    caps: u32,
    user: &str,
    auth: &[u8],
    database: Option<&str>,
    plugin: &str,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(128);
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
    p.push(UTF8MB4_GENERAL_CI);
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    put_lenenc_str(&mut p, auth);
    if let Some(db) = database {
        p.extend_from_slice(db.as_bytes());
        p.push(0);
    }
    p.extend_from_slice(plugin.as_bytes());
    p.push(0);
    p
}

pub fn ok_packet(affected: u64, last_insert_id: u64, status: u16, info: &str) -> Vec<u8> {
    let mut p = vec![0];
    put_lenenc_int(&mut p, affected);
    put_lenenc_int(&mut p, last_insert_id);
    p.extend_from_slice(&status.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(info.as_bytes());
    p
}

/// A text column definition (VAR_STRING, utf8mb4) for results the proxy makes itself.
pub fn column_def(name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(32 + name.len());
    for s in ["def", "", "", ""] {
        put_lenenc_str(&mut p, s.as_bytes());
    }
    put_lenenc_str(&mut p, name.as_bytes());
    put_lenenc_str(&mut p, b"");
    p.push(0x0c);
    p.extend_from_slice(&(UTF8MB4_GENERAL_CI as u16).to_le_bytes());
    p.extend_from_slice(&256u32.to_le_bytes());
    p.push(0xFD);
    p.extend_from_slice(&[0, 0, 0, 0, 0]);
    p
}

/// The `SET NAMES` character set for a client's handshake collation id, when it is not
/// utf8mb4 (what the proxy's backend connections use).
pub fn charset_name(collation: u8) -> Option<&'static str> {
    match collation {
        8 | 47 | 48 | 49 | 94 => Some("latin1"),
        33 | 83 | 192..=215 => Some("utf8mb3"),
        28 | 87 => Some("gbk"),
        24 | 86 => Some("gb2312"),
        63 => Some("binary"),
        11 | 65 => Some("ascii"),
        _ => None,
    }
}

pub fn eof_packet(status: u16) -> Vec<u8> {
    let mut p = vec![0xFE, 0, 0];
    p.extend_from_slice(&status.to_le_bytes());
    p
}

pub fn err_packet((code, state): (u16, &str), message: &str) -> Vec<u8> {
    let mut p = vec![0xFF];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    p.extend_from_slice(&state.as_bytes()[..5]);
    // MySQL's limit on an error message (MYSQL_ERRMSG_SIZE).
    let mut m = message;
    if m.len() > 512 {
        let mut end = 509;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m = &m[..end];
    }
    p.extend_from_slice(m.as_bytes());
    if m.len() < message.len() {
        p.extend_from_slice(b"...");
    }
    p
}

/// An OK packet's status flags.
pub fn ok_status(p: &[u8]) -> Option<u16> {
    let mut r = Reader::new(p);
    (r.u8().ok()? == 0).then_some(())?;
    r.lenenc_int().ok()?;
    r.lenenc_int().ok()?;
    r.u16().ok()
}

/// An OK packet's affected rows and last insert id.
pub fn ok_counts(p: &[u8]) -> Option<(u64, u64)> {
    let mut r = Reader::new(p);
    (r.u8().ok()? == 0).then_some(())?;
    Some((r.lenenc_int().ok()??, r.lenenc_int().ok()??))
}

/// An EOF packet (0xFE, shorter than 9 bytes) and its status flags.
pub fn eof_status(p: &[u8]) -> Option<u16> {
    (p.first() == Some(&0xFE) && p.len() < 9).then(|| {
        if p.len() >= 5 {
            u16::from_le_bytes([p[3], p[4]])
        } else {
            0
        }
    })
}

/// (code, message) of an ERR packet.
pub fn parse_err(p: &[u8]) -> Option<(u16, String)> {
    let mut r = Reader::new(p);
    (r.u8().ok()? == 0xFF).then_some(())?;
    let code = r.u16().ok()?;
    let mut rest = r.rest();
    if rest.first() == Some(&b'#') && rest.len() >= 6 {
        rest = &rest[6..];
    }
    Some((code, String::from_utf8_lossy(rest).into_owned()))
}

fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut c = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for p in parts {
        c.update(p);
    }
    c.finish().as_ref().try_into().expect("sha1 is 20 bytes") // ok: fixed digest size
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut c = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        c.update(p);
    }
    c.finish().as_ref().try_into().expect("sha256 is 32 bytes") // ok: fixed digest size
}

/// `mysql_native_password`: SHA1(pw) XOR SHA1(nonce + SHA1(SHA1(pw))); empty for an
/// empty password.
pub fn scramble_native(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let nonce = &nonce[..nonce.len().min(20)];
    let stage1 = sha1(&[password]);
    let stage2 = sha1(&[&stage1]);
    let mix = sha1(&[nonce, &stage2]);
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// `caching_sha2_password`'s fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce).
pub fn scramble_sha2(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let nonce = &nonce[..nonce.len().min(20)];
    let stage1 = sha256(&[password]);
    let stage2 = sha256(&[&stage1]);
    let mix = sha256(&[&stage2, nonce]);
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

/// Constant-time comparison of a client's scramble against the expected one.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// How many inputs the in-process fuzz tests try: `TESSERA_FUZZ_ITERS`, else `default`
/// (`bench/fuzz-dbproxy.sh` runs them with millions).
pub fn fuzz_iterations(default: usize) -> usize {
    std::env::var("TESSERA_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 20 random nonce bytes, none of them NUL (clients treat the nonce as a C string).
pub fn nonce() -> [u8; 20] {
    let mut n = [0u8; 20];
    let rng = ring::rand::SystemRandom::new();
    if ring::rand::SecureRandom::fill(&rng, &mut n).is_err() {
        n.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    for b in &mut n {
        *b = (*b % 0x7E) + 1;
    }
    n
}

#[cfg(test)]
mod tests;
