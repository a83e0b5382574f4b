//! The `strata` binary, run as users run it.

use std::process::Command;

#[test]
fn demo_listens_dials_from_the_listen_port_and_echoes() {
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
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name:?} line in {stdout}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let client_listens = field("client listens");
    assert_ne!(field("server listens"), client_listens);
    // Port reuse: the client's dial leaves from its listen port, and the server sees it.
    assert_eq!(field("client dialed  from"), client_listens);
    assert_eq!(field("server saw"), client_listens);
    assert!(stdout.contains("1048576 bytes, verified"), "{stdout}");
}
