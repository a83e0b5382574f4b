//! The JSON object `strata dial` prints on one line. Its keys are a contract for scripts:
//! keys for measurements that were not asked for are left out, and numbers are rounded to
//! three decimals.

use serde::Serialize;
use strata::host::IdentifyInfo;

/// The outcome of `strata dial`, in the order its keys are printed.
#[derive(Debug, Serialize)]
pub struct DialReport {
    pub peer_id: String,
    pub connect_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping_rtt_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf_up_gbps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perf_down_gbps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conns_per_sec: Option<f64>,
    pub remote: RemoteReport,
}

/// What the remote said about itself over identify.
#[derive(Debug, Serialize)]
pub struct RemoteReport {
    pub agent_version: String,
    pub protocol_version: String,
    pub protocols: Vec<String>,
    pub listen_addrs: Vec<String>,
    /// `null` when the remote did not say how it sees us.
    pub observed_addr: Option<String>,
}

impl From<&IdentifyInfo> for RemoteReport {
    fn from(info: &IdentifyInfo) -> Self {
        RemoteReport {
            agent_version: info.agent_version.clone(),
            protocol_version: info.protocol_version.clone(),
            protocols: info.protocols.clone(),
            listen_addrs: info.listen_addrs.iter().map(ToString::to_string).collect(),
            observed_addr: info.observed_addr.as_ref().map(ToString::to_string),
        }
    }
}

impl DialReport {
    /// The report as one line of JSON.
    pub fn to_json_line(&self) -> String {
        // Serializing plain strings, numbers and options cannot fail; non-finite numbers
        // become `null`.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Rounds to three decimals: milliseconds to the microsecond, Gbit/s to the Mbit/s.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote() -> RemoteReport {
        RemoteReport {
            agent_version: "a\"b\n".into(),
            protocol_version: "ipfs/0.1.0".into(),
            protocols: vec!["/ipfs/ping/1.0.0".into()],
            listen_addrs: vec![],
            observed_addr: None,
        }
    }

    #[test]
    fn keys_in_order_unasked_left_out_and_strings_escaped() {
        let report = DialReport {
            peer_id: "12D3".into(),
            connect_ms: round3(1.23456),
            ping_rtt_ms: None,
            echo_verified: Some(true),
            perf_up_gbps: None,
            perf_down_gbps: None,
            conns_per_sec: Some(f64::NAN),
            remote: remote(),
        };
        assert_eq!(
            report.to_json_line(),
            r#"{"peer_id":"12D3","connect_ms":1.235,"echo_verified":true,"conns_per_sec":null,"remote":{"agent_version":"a\"b\n","protocol_version":"ipfs/0.1.0","protocols":["/ipfs/ping/1.0.0"],"listen_addrs":[],"observed_addr":null}}"#
        );
    }
}
