//! Runs each example with no arguments (both sides in one process, on loopback) and checks
//! what it prints.
//!
//! The examples are separate binaries: plain `cargo test` builds them, but a run limited
//! to this test (`cargo test --test examples`) does not; build them first with
//! `cargo build --examples`.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// Kills the example if the test ends (or panics) while it still runs.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `target/<profile>/examples/<name>`, next to this test's `target/<profile>/deps/`.
fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs the example with no arguments and returns its stdout once it has exited 0.
fn run(name: &str) -> String {
    let path = example_path(name);
    assert!(
        path.exists(),
        "example binary {} not found: run `cargo build --examples` first",
        path.display()
    );
    let child = Command::new(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
    let mut child = KillOnDrop(child);
    let mut stdout = child.0.stdout.take().expect("piped stdout");
    let mut stderr = child.0.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("waiting for the example") {
            break status;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "example {name} still running after {TIMEOUT:?}; killed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    assert!(
        status.success(),
        "example {name} failed ({status})\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

/// The rest of the first line starting with `prefix`.
fn after<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{out}"))
}

/// The numbers in `line`, in order.
fn numbers(line: &str) -> Vec<f64> {
    line.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[test]
fn echo_returns_what_was_sent() {
    let out = run("echo");
    let sent = after(&out, "sent: ");
    assert!(!sent.is_empty());
    assert_eq!(after(&out, "echoed: "), sent, "{out}");
}

#[test]
fn chat_lines_cross_both_ways() {
    let out = run("chat");
    for line in [
        "alice heard: hi alice",
        "alice heard: how is the weather?",
        "alice heard: bye",
        "bob heard: hi bob",
        "bob heard: sunny here",
        "bob heard: bye bob",
        "chat done",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing {line:?} in:\n{out}"
        );
    }
}

#[test]
fn ping_prints_three_round_trips() {
    let out = run("ping");
    let rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("rtt "))
        .map(|r| {
            let ms = r.strip_suffix(" ms").unwrap_or_else(|| panic!("{r:?}"));
            ms.parse()
                .unwrap_or_else(|_| panic!("not a number: {ms:?}"))
        })
        .collect();
    assert_eq!(rtts.len(), 3, "{out}");
    assert!(rtts.iter().all(|&ms| ms > 0.0), "{out}");
}

#[test]
fn custom_host_gates_a_peer_and_carries_a_connection_on_its_own_transport() {
    let out = run("custom_host");
    assert!(out.contains("gater: refusing"), "{out}");
    // The summary line, not the refusal line (whose peer ID holds digits too).
    let summary = out
        .lines()
        .find(|l| l.starts_with("gater: ") && l.contains("inbound accepted"))
        .unwrap_or_else(|| panic!("no gater summary in:\n{out}"));
    let gater = numbers(summary);
    assert_eq!(gater.len(), 2, "{summary}");
    let (accepted, refused) = (gater[0], gater[1]);
    assert!(accepted >= 2.0 && refused >= 1.0, "{out}");
    assert!(
        after(&out, "client connected via ").starts_with("tcp + /noise + /yamux/1.0.0"),
        "{out}"
    );
    let counts = numbers(after(&out, "counting tcp: "));
    assert_eq!(counts.len(), 4, "{out}");
    assert!(counts.iter().all(|&n| n > 0.0), "{out}");
}

#[test]
fn notifiee_hears_every_event_in_order() {
    let out = run("notifiee");
    let at = |prefix: &str| {
        out.lines()
            .position(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
    };
    let order = [
        at("A listen /ip4/127.0.0.1/tcp/"),
        at("A connected "),
        at("A disconnected "),
        at("A listen_close /ip4/127.0.0.1/tcp/"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{order:?} in:\n{out}"
    );
    assert!(at("B connected ") < at("B disconnected "), "{out}");
    assert!(
        after(&out, "A disconnected ").ends_with("reason: closed locally"),
        "{out}"
    );
    assert!(
        after(&out, "B disconnected ").ends_with("reason: closed by the remote peer"),
        "{out}"
    );
    assert!(out.contains("both hosts shut down"), "{out}");
}

#[test]
fn reuseport_shares_a_port_and_dials_from_the_listen_port() {
    let out = run("reuseport");
    assert!(
        after(&out, "A and B share port ").ends_with(": true"),
        "{out}"
    );
    assert!(
        after(&out, "the dial left from C's listen port ").ends_with(": true"),
        "{out}"
    );
}

#[test]
fn broadcast_delivers_every_message_in_the_room() {
    let out = run("broadcast");
    let last = out.lines().last().expect("some output");
    let n = numbers(after(last, "delivered "));
    assert_eq!(n.len(), 2, "{last}");
    assert_eq!(n[0], n[1], "{last}");
    // 5 hosts, each sending 100 messages to 4 others.
    assert_eq!(n[1], 2000.0, "{last}");
    assert_eq!(out.lines().filter(|l| l.starts_with("host ")).count(), 5);
}
