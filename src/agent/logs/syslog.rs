//! Collected lines as RFC 5424 syslog messages, and their framing.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD-ID unit=".." file=".." seq=".."] MSG`
//! with the node as HOSTNAME, the app as APP-NAME, the instance (or the unit, for a
//! shared log directory) as PROCID, and `stdout`, `stderr` or `file` as MSGID. Lines
//! from stderr are severity 3 (error), every other line 6 (informational), as container
//! runtimes' syslog drivers do. On TCP and TLS each message is octet-counted
//! (`LEN SP MSG`, RFC 6587 §3.4.1 and RFC 5425), so a line may hold any byte.

use crate::api::logs::Record;

const SEVERITY_ERR: u8 = 3;
const SEVERITY_INFO: u8 = 6;

/// One message, unframed.
pub fn message(r: &Record, facility: u8, sd_id: &str) -> Vec<u8> {
    let severity = if r.file == "stderr" {
        SEVERITY_ERR
    } else {
        SEVERITY_INFO
    };
    let msgid = match r.file.as_str() {
        "stdout" | "stderr" => r.file.as_str(),
        _ => "file",
    };
    let procid = r.instance.as_deref().unwrap_or(&r.unit);
    let mut out = format!(
        "<{}>1 {} {} {} {} {} [{} unit=\"{}\" file=\"{}\" seq=\"{}\"] ",
        u16::from(facility) * 8 + u16::from(severity),
        crate::util::rfc3339_ms(r.t),
        header_field(&r.node, 255),
        header_field(&r.app, 48),
        header_field(procid, 128),
        msgid,
        sd_id,
        param_value(&r.unit),
        param_value(&r.file),
        r.seq
    )
    .into_bytes();
    out.extend_from_slice(r.line.as_bytes());
    out
}

/// `msg` as an octet-counted frame.
pub fn frame(msg: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg);
}

/// `msg` cut to at most `max` bytes without splitting a UTF-8 character of its line.
pub fn cut(mut msg: Vec<u8>, max: usize) -> Vec<u8> {
    if msg.len() > max {
        let mut end = max;
        // Continuation bytes are 10xxxxxx: back up to the start of the character.
        while end > 0 && msg[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        msg.truncate(end);
    }
    msg
}

/// A header field: printable US-ASCII without spaces (others become `_`), `-` when
/// empty, at most `max` characters.
fn header_field(s: &str, max: usize) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

/// A structured-data parameter value: `"`, `\` and `]` escaped with `\`.
fn param_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(file: &str, line: &str) -> Record {
        Record {
            seq: 42,
            t: 1_796_025_600_123,
            node: "host-a".into(),
            app: "echo".into(),
            unit: "rz00".into(),
            instance: Some("echo-rz00-0".into()),
            file: file.into(),
            line: line.into(),
        }
    }

    #[test]
    fn messages_follow_rfc_5424() {
        let m = message(&record("stdout", "hello world"), 16, "tessera@32473");
        assert_eq!(
            String::from_utf8(m).unwrap(),
            "<134>1 2026-11-30T08:00:00.123Z host-a echo echo-rz00-0 stdout \
             [tessera@32473 unit=\"rz00\" file=\"stdout\" seq=\"42\"] hello world"
        );
        // stderr is severity 3; a file under logDir is MSGID `file`, its path in SD.
        let m = message(&record("stderr", "boom"), 1, "x@1");
        assert!(m.starts_with(b"<11>1 "), "{}", String::from_utf8_lossy(&m));
        let mut r = record("app/\"odd]\\name.log", "x");
        r.instance = None;
        r.node = "host with space".into();
        let m = String::from_utf8(message(&r, 16, "x@1")).unwrap();
        assert!(
            m.contains(" host_with_space echo rz00 file [x@1 unit=\"rz00\" file=\"app/\\\"odd\\]\\\\name.log\""),
            "{m}"
        );
    }

    #[test]
    fn frames_count_octets_and_cuts_keep_characters_whole() {
        let mut out = Vec::new();
        frame("héllo".as_bytes(), &mut out);
        frame(b"", &mut out);
        assert_eq!(out, "6 héllo0 ".as_bytes());
        assert_eq!(cut("aé".as_bytes().to_vec(), 2), b"a");
        assert_eq!(cut(b"abc".to_vec(), 5), b"abc");
        assert_eq!(cut(b"abc".to_vec(), 2), b"ab");
    }
}
