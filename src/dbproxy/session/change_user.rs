//! COM_CHANGE_USER: a client switches to another proxy user on the same connection (what
//! connection pools and `mysql_change_user` do). The new user's password is checked
//! against the nonce of the connection's greeting, as a server does; a client asking for
//! another plugin is switched to `mysql_native_password`. Success resets the session
//! (backend connections released, transaction, session variables and prepared
//! statements dropped) as COM_RESET_CONNECTION does; a refusal closes the connection.

use super::*;

impl Session {
    /// Drops what the session carries: backend connections go back to their pools
    /// (reset there), no transaction, no session variables.
    pub(super) async fn reset(&mut self) {
        self.release_all().await;
        self.sets.clear();
        self.in_tx = false;
        self.tx_unit = None;
        self.autocommit = true;
        self.wrote = false;
    }

    pub(super) async fn change_user(&mut self, payload: &[u8]) -> Reply {
        let req = match wire::parse_change_user(&payload[1..], self.caps) {
            Ok(r) => r,
            Err(m) => {
                let msg = format!("Malformed COM_CHANGE_USER: {}", m.0);
                self.error(1, er::HANDSHAKE, &msg).await?;
                return Err(Fatal(msg));
            }
        };
        let nonce = self.nonce;
        let (mut auth, mut plugin, mut seq) = (
            req.auth.clone(),
            req.plugin.clone().unwrap_or_else(|| wire::NATIVE.into()),
            1u8,
        );
        if plugin != wire::NATIVE && plugin != wire::SHA2 {
            let mut p = vec![0xFE];
            p.extend_from_slice(wire::NATIVE.as_bytes());
            p.push(0);
            p.extend_from_slice(&nonce);
            p.push(0);
            self.send(1, &p).await?;
            self.flush().await?;
            let s = wire::read_packet(&mut self.rd, &mut self.buf, 64 * 1024).await?;
            auth = std::mem::take(&mut self.buf);
            plugin = wire::NATIVE.into();
            seq = s.wrapping_add(1);
        }
        let topo = self.shared.topology.load_full();
        let ok = topo.users.get(&req.user).is_some_and(|a| {
            let want = if plugin == wire::SHA2 {
                wire::scramble_sha2(a.password.as_bytes(), &nonce)
            } else {
                wire::scramble_native(a.password.as_bytes(), &nonce)
            };
            wire::same(&auth, &want)
        });
        if !ok {
            self.shared
                .metrics
                .logins
                .with_label_values(&["denied"])
                .inc();
            tracing::info!(peer = %self.peer, from = %self.user, to = %req.user, "MySQL change of user refused");
            let msg = format!(
                "Access denied for user '{}'@'{}' (using password: {})",
                req.user,
                self.peer.ip(),
                if auth.is_empty() { "NO" } else { "YES" }
            );
            self.error(seq, er::ACCESS_DENIED, &msg).await?;
            return Err(Fatal(msg));
        }
        if plugin == wire::SHA2 {
            self.send(seq, &[0x01, 0x03]).await?;
            seq = seq.wrapping_add(1);
        }
        self.reset().await;
        self.stmts.clear();
        let previous = std::mem::replace(&mut self.user, req.user.clone());
        self.db = None;
        if let Some(db) = &req.database {
            if let Err((code, msg)) = self.check_db(&topo, db) {
                self.error(seq, code, &msg).await?;
                return Err(Fatal(msg));
            }
            self.db = Some(db.to_ascii_lowercase());
        }
        if let Some(cs) = req.charset.and_then(wire::charset_name) {
            self.sets.push(format!("SET NAMES {cs}"));
        }
        self.shared.metrics.logins.with_label_values(&["ok"]).inc();
        tracing::debug!(peer = %self.peer, from = %previous, to = %self.user, "MySQL user changed");
        self.ok(seq).await
    }
}
