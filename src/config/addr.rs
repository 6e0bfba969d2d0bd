//! Listen addresses: `IP:PORT` only, so binding never needs a name lookup.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A socket address a listener binds, written `IP:PORT` (`[::1]:7400` for IPv6).
/// Port 0 asks the kernel for a free port (tests use it; the bound port is reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim().parse::<SocketAddr>().map(ListenAddr).map_err(|_| {
            format!("`{s}` is not a listen address: expected IP:PORT, like 127.0.0.1:7400 or [::1]:7400")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ListenAddr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address IP:PORT")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ListenAddr, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_and_ipv6() {
        assert_eq!(
            "127.0.0.1:7400".parse::<ListenAddr>().unwrap().0.port(),
            7400
        );
        assert!("[::1]:0".parse::<ListenAddr>().is_ok());
    }

    #[test]
    fn rejects_names_and_bad_ports() {
        for bad in ["localhost:7400", "127.0.0.1", "127.0.0.1:99999", "", ":80"] {
            let err = bad.parse::<ListenAddr>().unwrap_err();
            assert!(err.contains("IP:PORT"), "{bad}: {err}");
        }
    }
}
