//! IPv4 addresses with a prefix length (`192.168.100.240/24`), as the actions take them.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 address and prefix length. `Display` gives back `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Cidr {
        Cidr { addr, prefix }
    }

    fn mask(self) -> u32 {
        match self.prefix {
            0 => 0,
            p => u32::MAX << (32 - u32::from(p.min(32))),
        }
    }

    /// The network address (`192.168.100.0` for `192.168.100.240/24`).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & self.mask())
    }

    /// The broadcast address; equal to the address for /31 and /32.
    pub fn broadcast(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !self.mask())
    }

    /// Whether `ip` is in this subnet.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// `192.168.100.240/24` as `192_168_100_240_24`, for UCI section names (which allow
    /// only `[A-Za-z0-9_]`).
    pub fn underscored(self) -> String {
        self.to_string().replace(['.', '/'], "_")
    }

    /// Builds the CIDR from a dotted netmask (`255.255.255.0`); `None` for a mask with holes.
    pub fn from_netmask(addr: Ipv4Addr, mask: Ipv4Addr) -> Option<Cidr> {
        let m = u32::from(mask);
        let prefix = m.leading_ones();
        (m.checked_shl(prefix).unwrap_or(0) == 0).then_some(Cidr::new(addr, prefix as u8))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Only `a.b.c.d/len` with 1 <= len <= 32: the spec wants the virtual IP in CIDR form.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| "the prefix length is missing".to_string())?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| (1..=32).contains(p))
            .ok_or_else(|| format!("prefix length {p:?} is not a number from 1 to 32"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Cidr, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_subnets() {
        let c: Cidr = "192.168.100.240/24".parse().expect("cidr");
        assert_eq!(c.network(), Ipv4Addr::new(192, 168, 100, 0));
        assert_eq!(c.broadcast(), Ipv4Addr::new(192, 168, 100, 255));
        assert!(c.contains(Ipv4Addr::new(192, 168, 100, 1)));
        assert!(!c.contains(Ipv4Addr::new(192, 168, 101, 1)));
        assert_eq!(c.underscored(), "192_168_100_240_24");
        assert_eq!(c.to_string(), "192.168.100.240/24");
        for bad in [
            "192.168.100.240",
            "192.168.100/24",
            "1.2.3.4/0",
            "1.2.3.4/33",
            "x/24",
            "1.2.3.4/",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        assert_eq!(
            Cidr::from_netmask(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(255, 255, 254, 0)),
            Some(Cidr::new(Ipv4Addr::new(10, 0, 0, 1), 23))
        );
        assert_eq!(
            Cidr::from_netmask(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(255, 0, 255, 0)),
            None
        );
        assert_eq!(
            Cidr::from_netmask(
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(255, 255, 255, 255)
            )
            .map(|c| c.prefix),
            Some(32)
        );
    }
}
