//! The kinds, who may write each, and which kinds each may name (the specs themselves
//! are in `specs.rs`).

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Region,
    Zone,
    Unit,
    ShardMap,
    Cluster,
    Node,
    App,
    Instance,
    Artifact,
    Release,
    TrafficRule,
    DataSource,
    Certificate,
    User,
    Event,
    AuditEvent,
}

/// Who may change a kind through the resource API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writers {
    /// Admins only (the estate's shape: regions, zones, units, shard maps, ...).
    Admin,
    /// Admins and operators (apps, traffic rules, releases, artifacts).
    Operators,
    /// Nobody through PUT/DELETE: written by tessera itself (audit events, events)
    /// or through their own endpoints (users).
    System,
}

impl Kind {
    pub const ALL: [Kind; 16] = [
        Kind::Region,
        Kind::Zone,
        Kind::Unit,
        Kind::ShardMap,
        Kind::Cluster,
        Kind::Node,
        Kind::App,
        Kind::Instance,
        Kind::Artifact,
        Kind::Release,
        Kind::TrafficRule,
        Kind::DataSource,
        Kind::Certificate,
        Kind::User,
        Kind::Event,
        Kind::AuditEvent,
    ];

    /// The `kind` field: `Region`, `ShardMap`, ...
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Region => "Region",
            Kind::Zone => "Zone",
            Kind::Unit => "Unit",
            Kind::ShardMap => "ShardMap",
            Kind::Cluster => "Cluster",
            Kind::Node => "Node",
            Kind::App => "App",
            Kind::Instance => "Instance",
            Kind::Artifact => "Artifact",
            Kind::Release => "Release",
            Kind::TrafficRule => "TrafficRule",
            Kind::DataSource => "DataSource",
            Kind::Certificate => "Certificate",
            Kind::User => "User",
            Kind::Event => "Event",
            Kind::AuditEvent => "AuditEvent",
        }
    }

    /// The URL segment: `regions`, `shardmaps`, ...
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Region => "regions",
            Kind::Zone => "zones",
            Kind::Unit => "units",
            Kind::ShardMap => "shardmaps",
            Kind::Cluster => "clusters",
            Kind::Node => "nodes",
            Kind::App => "apps",
            Kind::Instance => "instances",
            Kind::Artifact => "artifacts",
            Kind::Release => "releases",
            Kind::TrafficRule => "trafficrules",
            Kind::DataSource => "datasources",
            Kind::Certificate => "certificates",
            Kind::User => "users",
            Kind::Event => "events",
            Kind::AuditEvent => "auditevents",
        }
    }

    /// A kind from its singular or plural name, any case (`unit`, `Units`, `shardmap`).
    pub fn parse(s: &str) -> Option<Kind> {
        let l = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| k.plural() == l || k.singular().to_ascii_lowercase() == l)
    }

    pub fn writers(self) -> Writers {
        match self {
            Kind::App | Kind::TrafficRule | Kind::Release | Kind::Artifact | Kind::Instance => {
                Writers::Operators
            }
            Kind::User | Kind::Event | Kind::AuditEvent => Writers::System,
            _ => Writers::Admin,
        }
    }

    /// Kinds kept as resources in the store (audit events live in their own chain).
    pub fn stored(self) -> bool {
        self != Kind::AuditEvent
    }

    /// The kinds a spec of this kind may name (what `specs::references` can return).
    pub fn refers_to(self) -> &'static [Kind] {
        match self {
            Kind::Zone => &[Kind::Region],
            Kind::Unit | Kind::Cluster => &[Kind::Zone],
            Kind::ShardMap | Kind::DataSource => &[Kind::Unit],
            Kind::App => &[Kind::Unit, Kind::Zone],
            Kind::Node => &[Kind::Zone, Kind::Cluster],
            Kind::Instance => &[Kind::App, Kind::Unit, Kind::Node],
            Kind::Release => &[Kind::App, Kind::Unit],
            Kind::TrafficRule => &[Kind::App, Kind::Zone],
            _ => &[],
        }
    }

    /// Every kind whose objects a change to this kind must be checked against: the kinds
    /// it names, the kinds that name it, and for units and shard maps both (slot rules).
    pub fn checked_with(self) -> Vec<Kind> {
        let mut out = vec![self];
        out.extend(self.refers_to());
        out.extend(
            Kind::ALL
                .into_iter()
                .filter(|k| k.refers_to().contains(&self)),
        );
        if matches!(self, Kind::Unit | Kind::ShardMap) {
            out.extend([Kind::Unit, Kind::ShardMap]);
        }
        out.sort();
        out.dedup();
        out
    }
}

/// A reference from one object to another: `field` of the referrer names `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub field: String,
    pub kind: Kind,
    pub name: String,
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_both_ways() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.plural()), Some(k));
            assert_eq!(Kind::parse(k.singular()), Some(k));
        }
        assert_eq!(Kind::parse("shardmap"), Some(Kind::ShardMap));
        assert_eq!(Kind::parse("bogus"), None);
    }
}
