//! TCP transport settings and their defaults.

use std::time::Duration;

/// The environment variable that turns port reuse off when set to `false` (or `0`, `no`,
/// `off`). It is read once, when a [`TcpConfig`] is made with `default()`.
pub const REUSEPORT_ENV: &str = "STRATA_TCP_REUSEPORT";

/// Settings of a [`crate::TcpTransport`].
///
/// | field | default |
/// |---|---|
/// | `reuseport` | `true`, unless `STRATA_TCP_REUSEPORT=false` |
/// | `nodelay` | `true` |
/// | `keepalive` | 30 s |
/// | `linger_zero` | `true` (close sends RST, no TIME_WAIT) |
/// | `backlog` | 1024 |
/// | `connect_timeout` | 5 s |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConfig {
    /// SO_REUSEADDR and SO_REUSEPORT on listeners, and dials that leave from the port of a
    /// matching listener. Off: a port already taken is an error.
    pub reuseport: bool,
    /// TCP_NODELAY on every connection.
    pub nodelay: bool,
    /// TCP keepalive idle time; `None` leaves keepalive off.
    pub keepalive: Option<Duration>,
    /// SO_LINGER 0 on every connection.
    pub linger_zero: bool,
    /// The listen backlog handed to `listen(2)`.
    pub backlog: u32,
    /// How long a dial may take to connect.
    pub connect_timeout: Duration,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            reuseport: reuseport_from_env(std::env::var(REUSEPORT_ENV).ok().as_deref()),
            nodelay: true,
            keepalive: Some(Duration::from_secs(30)),
            linger_zero: true,
            backlog: 1024,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl TcpConfig {
    /// The defaults (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Turns port reuse on or off.
    pub fn reuseport(mut self, on: bool) -> Self {
        self.reuseport = on;
        self
    }

    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the listen backlog.
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }
}

/// Port reuse is on unless the variable says one of `false`, `0`, `no` or `off`.
pub(crate) fn reuseport_from_env(value: Option<&str>) -> bool {
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        Some(v) => !matches!(v.as_str(), "false" | "0" | "no" | "off"),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_turns_reuseport_off() {
        assert!(reuseport_from_env(None));
        assert!(reuseport_from_env(Some("true")));
        assert!(reuseport_from_env(Some("1")));
        for off in ["false", "FALSE", " 0 ", "no", "off"] {
            assert!(
                !reuseport_from_env(Some(off)),
                "{off:?} must turn reuse off"
            );
        }
    }

    #[test]
    fn documented_defaults() {
        let c = TcpConfig {
            reuseport: true,
            ..TcpConfig::default()
        };
        assert!(c.nodelay && c.linger_zero);
        assert_eq!(c.keepalive, Some(Duration::from_secs(30)));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.backlog, 1024);
    }
}
