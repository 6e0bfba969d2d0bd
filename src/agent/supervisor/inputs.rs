//! What the agent works from: the instances, apps, units and artifacts its feed (list
//! once, then watch) last installed, and a wake-up for each new set.

use crate::model::Kind;

/// The agent's inputs (instances, apps, units, artifacts) as its feed last installed
/// them, whether the feed is connected, and a wake-up for each new set.
#[derive(Default)]
pub struct Watched {
    latest: std::sync::Mutex<Option<std::sync::Arc<crate::api::feed::Inputs>>>,
    pub changed: tokio::sync::Notify,
    pub status: std::sync::Arc<std::sync::Mutex<crate::api::feed::FeedStatus>>,
}

impl Watched {
    /// The kinds the agent's feed lists and watches.
    pub const KINDS: [Kind; 4] = [Kind::Instance, Kind::App, Kind::Unit, Kind::Artifact];

    /// A new set from the feed (`source`: `control` or `cache`).
    pub fn install(&self, inputs: &crate::api::feed::Inputs, source: &str) {
        if source != "control" {
            return; // a cached set is not acted on: placement may have moved on since
        }
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::sync::Arc::new(inputs.clone()));
        self.changed.notify_one();
    }

    /// The inputs to act on: the latest set, while the feed is connected.
    pub(super) fn current(&self) -> Option<std::sync::Arc<crate::api::feed::Inputs>> {
        let connected = self.status.lock().map(|s| s.connected).unwrap_or(false);
        if !connected {
            return None;
        }
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
