use super::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn scrambles_match_the_reference_algorithms() {
    // Computed independently with Python's hashlib.
    let nonce: Vec<u8> = (1..=20).collect();
    assert_eq!(
        hex(&scramble_native(b"secret", &nonce)),
        "b32bb3a583e1340c0a1108d58b1be49781ad8c2f"
    );
    assert_eq!(
        hex(&scramble_sha2(b"secret", &nonce)),
        "746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9"
    );
    assert!(scramble_native(b"", &nonce).is_empty());
    assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
}

#[test]
fn change_user_requests_are_read() {
    let caps = cap::PROTOCOL_41 | cap::SECURE_CONNECTION | cap::PLUGIN_AUTH;
    let mut p = b"bob\0".to_vec();
    p.push(3);
    p.extend_from_slice(&[1, 2, 3]);
    p.extend_from_slice(b"accountdb\0");
    p.extend_from_slice(&[45, 0]);
    p.extend_from_slice(b"mysql_native_password\0");
    let c = parse_change_user(&p, caps).unwrap();
    assert_eq!(
        c,
        ChangeUser {
            user: "bob".into(),
            auth: vec![1, 2, 3],
            database: Some("accountdb".into()),
            charset: Some(45),
            plugin: Some(NATIVE.into()),
        }
    );
    // Old clients stop after the database.
    let short = parse_change_user(b"bob\0\0\0", caps).unwrap();
    assert_eq!(
        (short.database, short.charset, short.plugin),
        (None, None, None)
    );
    for bad in [&b""[..], b"bob", b"bob\0\x05ab"] {
        assert!(parse_change_user(bad, caps).is_err(), "{bad:?}");
    }
}

#[test]
fn handshake_round_trips() {
    let n = nonce();
    assert!(n.iter().all(|&b| b != 0));
    let p = handshake_v10(7, "8.0.0-tessera", &n, cap::PROXY);
    let h = parse_handshake_v10(&p).unwrap();
    assert_eq!(h.conn_id, 7);
    assert_eq!(h.version, "8.0.0-tessera");
    assert_eq!(h.nonce, n.to_vec());
    assert_eq!(h.caps, cap::PROXY);
    assert_eq!(h.plugin, NATIVE);

    let auth = scramble_native(b"pw", &n);
    let r = handshake_response(cap::PROXY, "app", &auth, Some("accountdb"), NATIVE);
    let c = parse_handshake_response(&r).unwrap();
    assert_eq!(c.user, "app");
    assert_eq!(c.auth, auth);
    assert_eq!(c.database.as_deref(), Some("accountdb"));
    assert_eq!(c.plugin.as_deref(), Some(NATIVE));
    assert!(!is_ssl_request(&r));
}

#[test]
fn lenenc_values_round_trip_at_every_width() {
    for v in [
        0u64,
        250,
        251,
        0xFFFF,
        0x1_0000,
        0xFF_FFFF,
        0x100_0000,
        u64::MAX,
    ] {
        let mut b = Vec::new();
        put_lenenc_int(&mut b, v);
        let mut r = Reader::new(&b);
        assert_eq!(r.lenenc_int().unwrap(), Some(v));
        assert!(r.is_empty());
    }
    assert_eq!(Reader::new(&[0xFB]).lenenc_int().unwrap(), None);
    assert!(Reader::new(&[0xFC, 1]).lenenc_int().is_err());
}

#[test]
fn ok_err_and_eof_packets() {
    let ok = ok_packet(3, 42, SERVER_STATUS_AUTOCOMMIT, "");
    assert_eq!(ok_status(&ok), Some(SERVER_STATUS_AUTOCOMMIT));
    assert_eq!(ok_counts(&ok), Some((3, 42)));
    let err = err_packet(er::PARSE, "near 'x'");
    assert_eq!(parse_err(&err), Some((1064, "near 'x'".into())));
    assert_eq!(&err[3..9], b"#42000");
    let long = "é".repeat(400);
    let err = err_packet(er::UNKNOWN, &long);
    assert!(err.len() < 530);
    assert!(std::str::from_utf8(&err[9..]).is_ok());
    assert_eq!(eof_status(&eof_packet(SERVER_MORE_RESULTS_EXISTS)), Some(8));
    assert_eq!(eof_status(&[0xFE; 9]), None);
}

#[test]
fn framing_splits_at_16_mib() {
    let big = vec![7u8; MAX_PAYLOAD + 10];
    let mut out = Vec::new();
    assert_eq!(frame(&mut out, 3, &big), 5);
    assert_eq!(&out[..4], &[0xFF, 0xFF, 0xFF, 3]);
    assert_eq!(&out[4 + MAX_PAYLOAD..8 + MAX_PAYLOAD], &[10, 0, 0, 4]);
    let mut exact = Vec::new();
    // A payload of exactly the maximum is followed by an empty packet.
    assert_eq!(frame(&mut exact, 0, &big[..MAX_PAYLOAD]), 2);
    assert_eq!(&exact[exact.len() - 4..], &[0, 0, 0, 1]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut buf = Vec::new();
        let mut r = &out[..];
        assert_eq!(read_packet(&mut r, &mut buf, 64 << 20).await.unwrap(), 3);
        assert_eq!(buf.len(), big.len());
        let mut r = &out[..];
        let e = read_packet(&mut r, &mut buf, 1024).await.unwrap_err();
        assert!(e.to_string().contains("max_allowed_packet"), "{e}");
    });
}

/// Random and mutated bytes never panic the parsers (a bounded in-process fuzz; the
/// cargo-fuzz targets run the same functions for longer).
#[test]
fn parsers_survive_random_and_mutated_input() {
    let mut rng = fastrand::Rng::with_seed(7);
    let good_hello = handshake_v10(1, "v", &nonce(), cap::PROXY);
    let good_resp = handshake_response(cap::PROXY, "u", &[1; 20], Some("d"), NATIVE);
    for i in 0..fuzz_iterations(20_000) {
        let mut b: Vec<u8> = match i % 3 {
            0 => (0..rng.usize(0..80)).map(|_| rng.u8(..)).collect(),
            1 => good_hello.clone(),
            _ => good_resp.clone(),
        };
        if !b.is_empty() && i % 3 != 0 {
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..b.len());
                b[at] = rng.u8(..);
            }
            b.truncate(rng.usize(..=b.len()));
        }
        let _ = parse_handshake_v10(&b);
        let _ = parse_handshake_response(&b);
        let _ = ok_status(&b);
        let _ = ok_counts(&b);
        let _ = parse_err(&b);
        let _ = eof_status(&b);
        let mut r = Reader::new(&b);
        while r.lenenc_str().is_ok_and(|s| s.is_some()) {}
    }
}
