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
        let topo = self.shared.topology.load_full();
        let plugin = req.plugin.clone().unwrap_or_else(|| wire::NATIVE.into());
        let seq = match self
            .authenticate(&topo, &req.user, req.auth.clone(), plugin, 1)
            .await?
        {
            Ok(seq) => seq,
            Err((seq, msg)) => {
                self.error(seq, er::ACCESS_DENIED, &msg).await?;
                return Err(Fatal(msg));
            }
        };
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
