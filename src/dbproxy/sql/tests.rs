use super::*;

fn keys(k: &[&str]) -> BTreeSet<String> {
    k.iter().map(|s| s.to_string()).collect()
}

fn vals(v: &[&str]) -> Option<BTreeSet<String>> {
    Some(keys(v))
}

#[test]
fn statements_are_classified() {
    let c = |s: &str| analyze(s).unwrap().class;
    assert_eq!(c("SELECT * FROM t WHERE uid = 1"), Class::Read);
    assert_eq!(c("SELECT * FROM t WHERE uid = 1 FOR UPDATE"), Class::Write);
    assert_eq!(c("INSERT INTO t (uid) VALUES (1)"), Class::Write);
    assert_eq!(c("UPDATE t SET a = 1 WHERE uid = 1"), Class::Write);
    assert_eq!(c("DELETE FROM t WHERE uid = 1"), Class::Write);
    assert_eq!(c("BEGIN"), Class::Begin);
    assert_eq!(c("START TRANSACTION"), Class::Begin);
    assert_eq!(c("COMMIT"), Class::Commit);
    assert_eq!(c("ROLLBACK"), Class::Rollback);
    assert_eq!(c("SET autocommit = 0"), Class::Autocommit(false));
    assert_eq!(c("SET autocommit=1"), Class::Autocommit(true));
    assert_eq!(c("SET NAMES utf8mb4"), Class::Session);
    assert_eq!(c("USE accountdb"), Class::Use("accountdb".into()));
    assert_eq!(c("CREATE TABLE t (uid BIGINT PRIMARY KEY)"), Class::Ddl);
    assert_eq!(c("SHOW TABLES"), Class::Other);
    assert_eq!(c("SELECT @@version_comment LIMIT 1"), Class::Read);
    assert_eq!(c("SELECT DATABASE()"), Class::Local(Local::Database));
    assert_eq!(c("select schema()"), Class::Local(Local::Database));
    assert_eq!(c("SHOW DATABASES"), Class::Local(Local::ShowDatabases));
    assert_eq!(c("SELECT DATABASE() FROM t"), Class::Read);
}

#[test]
fn shard_keys_are_found_in_where_in_and_insert_values() {
    let k = keys(&["uid"]);
    let v = |s: &str| analyze(s).unwrap().key_values(&k);
    assert_eq!(
        v("SELECT * FROM t WHERE uid = 2088000000000007"),
        vals(&["2088000000000007"])
    );
    assert_eq!(
        v("SELECT * FROM t WHERE t.uid = '42' AND a > 3"),
        vals(&["42"])
    );
    assert_eq!(v("SELECT * FROM t WHERE 42 = uid"), vals(&["42"]));
    assert_eq!(
        v("SELECT * FROM t WHERE uid IN (1, 2, 3)"),
        vals(&["1", "2", "3"])
    );
    assert_eq!(
        v("SELECT * FROM t WHERE uid = 1 OR uid = 52"),
        vals(&["1", "52"])
    );
    assert_eq!(v("SELECT * FROM t WHERE uid = 1 OR a = 2"), None);
    assert_eq!(v("SELECT * FROM t WHERE a = 2"), None);
    assert_eq!(v("SELECT * FROM t WHERE uid > 2"), None);
    assert_eq!(v("SELECT * FROM t WHERE uid NOT IN (1)"), None);
    assert_eq!(v("SELECT * FROM t"), None);
    assert_eq!(
        v("UPDATE t SET a = 1 WHERE (uid = 7) AND b = 2"),
        vals(&["7"])
    );
    assert_eq!(
        v("DELETE FROM t WHERE uid IN ('a1', 'b2')"),
        vals(&["a1", "b2"])
    );
    assert_eq!(
        v("INSERT INTO t (a, uid) VALUES (1, 11), (2, 62)"),
        vals(&["11", "62"])
    );
    assert_eq!(v("INSERT INTO t (a) VALUES (1)"), None);
    assert_eq!(v("INSERT INTO t (uid, a) VALUES (NOW(), 1)"), None);
    assert_eq!(v("INSERT INTO t (uid) SELECT uid FROM s"), None);
}

#[test]
fn tables_and_hints_are_read() {
    let a =
        analyze("/* tessera: shard=rz01 */ SELECT * FROM db.Orders o JOIN items i ON o.id = i.oid")
            .unwrap();
    assert_eq!(a.tables, vec!["orders", "items"]);
    assert_eq!(a.hint.unit.as_deref(), Some("rz01"));
    assert!(!a.hint.primary);
    assert!(hints("SELECT 1 /* tessera: primary */").primary);
    assert_eq!(hints("SELECT 1 /* other */"), Hint::default());
    assert_eq!(
        hints("SELECT 1 /* tessera: shard=gz00, primary */")
            .unit
            .as_deref(),
        Some("gz00")
    );
}

#[test]
fn scatter_plans_widen_limits_and_refuse_what_cannot_merge() {
    let m = analyze("SELECT id, uid FROM t ORDER BY uid DESC, 1 LIMIT 5 OFFSET 10")
        .unwrap()
        .merge
        .unwrap();
    assert_eq!(
        m.order_by,
        vec![
            (OrderKey::Name("uid".into()), true),
            (OrderKey::Position(1), false)
        ]
    );
    assert_eq!((m.limit, m.offset), (Some(5), 10));
    assert!(m.shard_sql.ends_with("LIMIT 15"), "{}", m.shard_sql);
    let m = analyze("SELECT * FROM t LIMIT 10, 5")
        .unwrap()
        .merge
        .unwrap();
    assert_eq!((m.limit, m.offset), (Some(5), 10));
    // A prepared statement's shards prepare plain `?`s, in the client's order.
    let m = analyze("SELECT name FROM t WHERE a = ? AND b IN (?, ?) ORDER BY c LIMIT 3 OFFSET 1")
        .unwrap()
        .merge
        .unwrap();
    assert_eq!(
        m.shard_sql,
        "SELECT name, c AS __tessera_order_0 FROM t WHERE a = ? AND b IN (?, ?) ORDER BY c LIMIT 4"
    );
    // LIMIT and OFFSET as parameters: the shards get one `?` for both (offset + limit).
    for (sql, limit_param, offset_param, limit, offset) in [
        (
            "SELECT a FROM t WHERE b = ? ORDER BY a LIMIT ?",
            Some(1),
            None,
            None,
            0,
        ),
        (
            "SELECT a FROM t WHERE b = ? ORDER BY a LIMIT ? OFFSET ?",
            Some(1),
            Some(2),
            None,
            0,
        ),
        (
            "SELECT a FROM t WHERE b = ? ORDER BY a LIMIT ?, ?",
            Some(2),
            Some(1),
            None,
            0,
        ),
        (
            "SELECT a FROM t WHERE b = ? ORDER BY a LIMIT 10 OFFSET ?",
            None,
            Some(1),
            Some(10),
            0,
        ),
    ] {
        let m = analyze(sql).unwrap().merge.unwrap();
        assert_eq!(
            (m.limit_param, m.offset_param, m.limit, m.offset),
            (limit_param, offset_param, limit, offset),
            "{sql}"
        );
        assert_eq!(m.kept_params, Some(1), "{sql}");
        assert_eq!(
            m.shard_sql, "SELECT a FROM t WHERE b = ? ORDER BY a LIMIT ?",
            "{sql}"
        );
    }
    let m = analyze("SELECT a FROM t WHERE b = ? ORDER BY a LIMIT ?, ?")
        .unwrap()
        .merge
        .unwrap();
    let (b, push) = m
        .bind(&[Some("x".into()), Some("20".into()), Some("5".into())])
        .unwrap();
    assert_eq!((b.offset, b.limit, push), (20, Some(5), Some(25)));
    assert!(m
        .bind(&[None, None, Some("5".into())])
        .unwrap_err()
        .contains("OFFSET"));
    assert!(m
        .bind(&[None, Some("1".into()), Some("-1".into())])
        .unwrap_err()
        .contains("LIMIT"));
    for bad in [
        "SELECT a FROM t ORDER BY ?",
        "SELECT COUNT(*) FROM t",
        "SELECT a, SUM(b) FROM t GROUP BY a",
        "SELECT DISTINCT a FROM t",
        "SELECT a FROM t UNION SELECT a FROM s",
        "SELECT a FROM t ORDER BY a + 1",
        "INSERT INTO t VALUES (1)",
    ] {
        assert!(analyze(bad).unwrap().merge.is_err(), "{bad}");
    }
}

#[test]
fn bad_sql_is_reported_not_panicked() {
    assert!(matches!(
        analyze("SELEC 1"),
        Err((ParseFailure::Syntax(_), _))
    ));
    assert!(matches!(analyze(""), Err((ParseFailure::Empty, _))));
    assert!(matches!(
        analyze("SELECT 1; SELECT 2"),
        Err((ParseFailure::Multi, _))
    ));
    let mut rng = fastrand::Rng::with_seed(3);
    let words = [
        "SELECT", "*", "FROM", "t", "WHERE", "uid", "=", "1", "(", ")", "IN", "'x", "ORDER", "BY",
        "LIMIT", ",", "/*", "*/", "tessera:", "shard=",
    ];
    for _ in 0..crate::dbproxy::wire::fuzz_iterations(3000) {
        let s: Vec<&str> = (0..rng.usize(0..14))
            .map(|_| words[rng.usize(..words.len())])
            .collect();
        if let Ok(a) = analyze(&s.join(" ")) {
            let _ = a.key_values(&keys(&["uid"]));
        }
    }
}

#[test]
fn placeholders_are_numbered_so_a_bound_shard_key_can_be_found() {
    use crate::dbproxy::prepared::marker;
    let k = keys(&["uid"]);
    let a = analyze("SELECT c FROM t WHERE a = ? AND uid = ?").unwrap();
    assert_eq!(a.key_values(&k), Some([marker(1)].into_iter().collect()));
    let a = analyze("INSERT INTO t (x, uid, y) VALUES (?, ?, 'q?')").unwrap();
    assert_eq!(a.key_values(&k), Some([marker(1)].into_iter().collect()));
    let a = analyze("SELECT c FROM t WHERE uid IN (?, ?)\n  AND b = ?").unwrap();
    assert_eq!(
        a.key_values(&k),
        Some([marker(0), marker(1)].into_iter().collect())
    );
}
