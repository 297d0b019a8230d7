//! The server address from `--host` and `--port`: `host`, `host:port`,
//! `[v6]:port` or a bare IPv6 address; printed back the same way, with an
//! IPv6 host in brackets (`[::1]:9998`, never `::1:9998`).

use std::fmt;

/// A server to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address, without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    /// Parses `--host`; a port in it wins over `default_port`, and clashes
    /// with an explicit `--port`.
    pub fn parse(host: &str, port: Option<u16>, default_port: u16) -> Result<Target, String> {
        let host = host.trim();
        let (name, in_host) = if let Some(rest) = host.strip_prefix('[') {
            let (name, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("'{host}': missing ']' after the IPv6 address"))?;
            match after {
                "" => (name, None),
                p => (
                    name,
                    Some(parse_port(host, p.strip_prefix(':').unwrap_or("x"))?),
                ),
            }
        } else {
            match host.matches(':').count() {
                0 => (host, None),
                // One colon is host:port; more is a bare IPv6 address.
                1 => {
                    let (name, p) = host.split_once(':').unwrap_or((host, ""));
                    (name, Some(parse_port(host, p)?))
                }
                _ => (host, None),
            }
        };
        if name.is_empty() {
            return Err(format!("'{host}': empty host name"));
        }
        let port = match (in_host, port) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!("--host {host} and --port {b} name different ports"))
            }
            (Some(a), _) => a,
            (None, Some(b)) => b,
            (None, None) => default_port,
        };
        Ok(Target {
            host: name.to_string(),
            port,
        })
    }
}

fn parse_port(host: &str, p: &str) -> Result<u16, String> {
    p.parse()
        .map_err(|_| format!("'{host}': '{p}' is not a port (use host:port or [v6]:port)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: Option<u16>) -> Result<String, String> {
        Target::parse(host, port, 9998).map(|t| t.to_string())
    }

    #[test]
    fn hosts_ports_and_ipv6() {
        assert_eq!(t("127.0.0.1", None).as_deref(), Ok("127.0.0.1:9998"));
        assert_eq!(t("127.0.0.1:9000", None).as_deref(), Ok("127.0.0.1:9000"));
        assert_eq!(
            t("127.0.0.1:9998", Some(9998)).as_deref(),
            Ok("127.0.0.1:9998")
        );
        assert_eq!(t("::1", None).as_deref(), Ok("[::1]:9998"));
        assert_eq!(t("::1", Some(9000)).as_deref(), Ok("[::1]:9000"));
        assert_eq!(t("[::1]:9995", None).as_deref(), Ok("[::1]:9995"));
        assert_eq!(t("[::1]", None).as_deref(), Ok("[::1]:9998"));
        assert_eq!(t("example.org", Some(1)).as_deref(), Ok("example.org:1"));
        assert!(t("host:port", None).is_err());
        assert!(t("[::1", None).is_err());
        assert!(t("[::1]9", None).is_err());
        assert!(t("h:9000", Some(9001)).is_err());
        assert!(t("", None).is_err());
    }
}
