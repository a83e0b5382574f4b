//! The `strata` binary, run as users run it.

use std::process::Command;

#[test]
fn demo_upgrades_both_ways_dials_from_the_listen_port_and_echoes() {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sections: Vec<&str> = stdout.split("== ").skip(1).collect();
    assert_eq!(sections.len(), 2, "{stdout}");
    for (section, security) in sections.iter().zip(["/tls/1.0.0", "/noise"]) {
        let field = |name: &str| {
            section
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name:?} line in {section}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        let server = field("server listens");
        let client = field("client listens");
        let dialed = field("client dialed  from");
        let seen = field("server saw");
        // Port reuse: the dial leaves from the client's listen port, and the server sees it.
        assert_eq!(dialed[0], client[0], "{section}");
        assert_eq!(seen[0], client[0], "{section}");
        // Each side authenticated the other.
        assert_eq!(seen[2], client[2], "{section}");
        assert_ne!(server[2], client[2]);
        assert!(
            section.contains(&format!("{security} + /yamux/1.0.0,")),
            "{section}"
        );
        assert!(
            section.contains("muxer picked in the handshake: yes"),
            "{section}"
        );
        assert!(
            section.contains("1048576 bytes over /echo/1.0.0"),
            "{section}"
        );
        assert!(section.contains("verified"), "{section}");
    }
}
