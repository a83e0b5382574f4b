//! The `strata` binary, run as users and scripts run it. Its output lines and JSON keys
//! are a contract.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use strata::identity::keypair_from_seed;

const BIN: &str = env!("CARGO_BIN_EXE_strata");

/// One test at a time: two of them time a process's exit, which the others' processes
/// would slow on a machine with two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Kills the child when dropped, so a failing test leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `strata listen ...` and returns it with a channel of its stdout lines.
fn listen(args: &[&str]) -> (Running, mpsc::Receiver<String>) {
    let mut command = Command::new(BIN);
    command.arg("listen").args(args).stderr(Stdio::inherit());
    run_with_lines(command)
}

/// Starts `command` and returns it with a channel of its stdout lines.
fn run_with_lines(mut command: Command) -> (Running, mpsc::Receiver<String>) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Running(child), rx)
}

fn next_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"));
        if line.starts_with(prefix) {
            return line;
        }
    }
}

#[test]
fn listen_prints_addresses_and_dial_prints_one_json_line() {
    let _serial = serial();
    let listener_id = keypair_from_seed(1).public().to_peer_id();
    let dialer_id = keypair_from_seed(2).public().to_peer_id();
    let (_listener, lines) = listen(&["--tcp", "/ip4/127.0.0.1/tcp/0", "--seed", "1", "--events"]);
    let listen_line = next_line(&lines, "LISTEN ");
    let addr = listen_line.strip_prefix("LISTEN ").unwrap().to_string();
    assert!(addr.starts_with("/ip4/127.0.0.1/tcp/"), "{addr}");
    assert!(addr.ends_with(&format!("/p2p/{listener_id}")), "{addr}");

    let out = Command::new(BIN)
        .args(["dial", &addr, "--seed", "2", "--ping", "--echo", "100000"])
        .args([
            "--perf-up",
            "1000000",
            "--perf-down",
            "1000000",
            "--conns",
            "3",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json_lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(json_lines.len(), 1, "exactly one line: {stdout}");
    let v: serde_json::Value = serde_json::from_str(json_lines[0]).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    for key in [
        "peer_id",
        "connect_ms",
        "ping_rtt_ms",
        "echo_verified",
        "perf_up_gbps",
        "perf_down_gbps",
        "conns_per_sec",
        "remote",
    ] {
        assert!(keys.contains(&key), "missing {key} in {v}");
    }
    assert_eq!(v["peer_id"], listener_id.to_string());
    assert_eq!(v["echo_verified"], true);
    assert!(v["connect_ms"].as_f64().unwrap() > 0.0);
    assert!(v["ping_rtt_ms"].as_f64().unwrap() > 0.0);
    assert!(v["perf_up_gbps"].as_f64().unwrap() > 0.0);
    assert!(v["perf_down_gbps"].as_f64().unwrap() > 0.0);
    assert!(v["conns_per_sec"].as_f64().unwrap() > 0.0);
    let remote = &v["remote"];
    assert!(remote["agent_version"]
        .as_str()
        .unwrap()
        .starts_with("strata/"));
    assert_eq!(remote["protocol_version"], "ipfs/0.1.0");
    let protocols: Vec<&str> = remote["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for p in [
        "/echo/1.0.0",
        "/ipfs/ping/1.0.0",
        "/ipfs/id/1.0.0",
        "/perf/1.0.0",
    ] {
        assert!(protocols.contains(&p), "{p} in {protocols:?}");
    }
    assert!(remote["listen_addrs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| addr.starts_with(a.as_str().unwrap())));
    assert!(remote["observed_addr"]
        .as_str()
        .unwrap()
        .starts_with("/ip4/127.0.0.1/tcp/"));

    // The listener's --events saw the dialer connect.
    let connected = next_line(&lines, "EVENT connected ");
    assert!(connected.contains(&dialer_id.to_string()), "{connected}");
}

#[test]
fn only_the_requested_keys_are_printed() {
    let _serial = serial();
    let (_listener, lines) = listen(&["--tcp", "/ip4/127.0.0.1/tcp/0", "--security", "noise"]);
    let addr = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    let out = Command::new(BIN)
        .args(["dial", &addr, "--security", "noise"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["connect_ms", "peer_id", "remote"]);
}

#[test]
fn dial_failures_exit_non_zero_with_a_message() {
    let _serial = serial();
    let nobody = keypair_from_seed(9).public().to_peer_id();
    // A closed port.
    let out = Command::new(BIN)
        .args(["dial", &format!("/ip4/127.0.0.1/tcp/1/p2p/{nobody}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("strata: "));
    // No peer ID to check.
    let out = Command::new(BIN)
        .args(["dial", "/ip4/127.0.0.1/tcp/1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/p2p/"));
}

#[test]
fn demo_runs_the_whole_stack_three_ways() {
    let _serial = serial();
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sections: Vec<&str> = stdout.split("== ").skip(1).collect();
    assert_eq!(sections.len(), 3, "{stdout}");
    for (section, name) in sections.iter().zip(["TCP + TLS", "TCP + Noise", "QUIC"]) {
        assert!(section.starts_with(name), "{section}");
        assert!(
            section.contains("echo     1048576 bytes verified=true"),
            "{section}"
        );
        assert!(section.contains("identify agent \"strata/"), "{section}");
        assert!(section.contains("\"/echo/1.0.0\""), "{section}");
        assert!(section.lines().any(|l| l.starts_with("ping ")), "{section}");
        assert!(
            section
                .lines()
                .any(|l| l.starts_with("perf ") && l.contains("Gbit/s")),
            "{section}"
        );
    }
    assert!(sections[0].contains("via tcp + /tls/1.0.0 + /yamux/1.0.0"));
    assert!(sections[1].contains("via tcp + /noise + /yamux/1.0.0"));
    assert!(sections[2].contains("via quic-v1 + built-in TLS 1.3 + quic"));
}

#[test]
fn listen_and_dial_over_quic() {
    let _serial = serial();
    let (_listener, lines) = listen(&["--quic", "/ip4/127.0.0.1/udp/0/quic-v1"]);
    let addr = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    assert!(
        addr.contains("/udp/") && addr.contains("/quic-v1/p2p/"),
        "{addr}"
    );
    let out = Command::new(BIN)
        .args(["dial", &addr, "--ping", "--echo", "70000"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["echo_verified"], true);
    assert!(v["ping_rtt_ms"].as_f64().unwrap() > 0.0);
    assert!(v["remote"]["observed_addr"]
        .as_str()
        .unwrap()
        .contains("/quic-v1"));
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill takes a process ID and a signal number and touches no memory of ours;
    // the child is ours and has not been reaped, so its PID names it.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({}, {sig}) failed", child.id());
}

/// Starts `strata dial ADDR --perf-down HUGE`: a download that never ends by itself.
fn downloader(addr: &str) -> Running {
    Running(
        Command::new(BIN)
            .args(["dial", addr, "--perf-down", "1000000000000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Waits for the child to exit, at most `limit`; returns its status and how long it took.
fn wait_exit(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "the process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Four peers download with perf and freeze (SIGSTOP) mid-transfer; SIGINT ends the
/// listener within its shutdown timeout plus 100 ms, with exit code 0.
#[test]
fn sigint_ends_listen_within_its_shutdown_timeout_despite_frozen_peers() {
    let _serial = serial();
    let (mut listener, lines) = listen(&[
        "--tcp",
        "/ip4/127.0.0.1/tcp/0",
        "--events",
        "--shutdown-timeout",
        "1",
    ]);
    let addr = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    let peers: Vec<Running> = (0..4).map(|_| downloader(&addr)).collect();
    for _ in 0..4 {
        next_line(&lines, "EVENT connected ");
    }
    // Let the downloads get going, then freeze the peers mid-transfer.
    std::thread::sleep(Duration::from_millis(300));
    for p in &peers {
        signal(&p.0, libc::SIGSTOP);
    }
    signal(&listener.0, libc::SIGINT);
    let (status, took) = wait_exit(&mut listener.0, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took <= Duration::from_millis(1100),
        "exited {took:?} after SIGINT, the timeout being 1 s"
    );
    for p in &peers {
        signal(&p.0, libc::SIGCONT);
    }
}

/// A second signal does not wait for the graceful shutdown: the listener exits at once.
#[test]
fn a_second_signal_forces_listen_to_exit_at_once() {
    let _serial = serial();
    let (mut listener, lines) = listen(&[
        "--tcp",
        "/ip4/127.0.0.1/tcp/0",
        "--events",
        "--shutdown-timeout",
        "30",
    ]);
    let addr = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    // A peer with a stream that stays open keeps the graceful phase waiting.
    let peer = downloader(&addr);
    next_line(&lines, "EVENT connected ");
    // Let its download stream open (it does within milliseconds of connecting).
    std::thread::sleep(Duration::from_millis(300));
    signal(&peer.0, libc::SIGSTOP);
    signal(&listener.0, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        listener.0.try_wait().unwrap().is_none(),
        "still shutting down gracefully"
    );
    signal(&listener.0, libc::SIGINT);
    let (status, took) = wait_exit(&mut listener.0, Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
    assert!(took < Duration::from_millis(500), "{took:?}");
    signal(&peer.0, libc::SIGCONT);
}

#[test]
fn listen_and_dial_over_websocket() {
    let _serial = serial();
    let listener_id = keypair_from_seed(5).public().to_peer_id();
    let (_listener, lines) = listen(&["--ws", "/ip4/127.0.0.1/tcp/0/ws", "--seed", "5"]);
    let addr = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    assert!(addr.starts_with("/ip4/127.0.0.1/tcp/"), "{addr}");
    assert!(
        addr.ends_with(&format!("/ws/p2p/{listener_id}")),
        "the full /ws address with /p2p: {addr}"
    );
    let out = Command::new(BIN)
        .args(["dial", &addr, "--ping", "--echo", "10000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["peer_id"], listener_id.to_string());
    assert_eq!(v["echo_verified"], true);
}

#[test]
fn listen_and_dial_over_secure_websocket() {
    let _serial = serial();
    let dir = std::env::temp_dir().join(format!("strata-wss-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.key_pair.serialize_pem()).unwrap();
    let listener_id = keypair_from_seed(6).public().to_peer_id();
    let (_listener, lines) = listen(&[
        "--ws",
        "/ip4/127.0.0.1/tcp/0/tls/ws",
        "--ws-cert",
        cert_pem.to_str().unwrap(),
        "--ws-key",
        key_pem.to_str().unwrap(),
        "--seed",
        "6",
    ]);
    let addr = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    assert!(
        addr.ends_with(&format!("/tls/ws/p2p/{listener_id}")),
        "the full /tls/ws address with /p2p: {addr}"
    );
    let dial = |trust: Option<&std::path::Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["dial", &addr, "--ping", "--echo", "10000"]);
        if let Some(trust) = trust {
            cmd.arg("--ws-trust").arg(trust);
        }
        cmd.output().unwrap()
    };
    let out = dial(Some(&cert_pem));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["peer_id"], listener_id.to_string());
    assert_eq!(v["echo_verified"], true);
    // Without --ws-trust there is nothing to trust the listener with: a clean failure.
    let out = dial(None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --ws-trust"), "{stderr}");
    // Nor can a secure listener start without its certificate.
    let out = Command::new(BIN)
        .args(["listen", "--ws", "/ip4/127.0.0.1/tcp/0/tls/ws"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs --ws-cert and --ws-key"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A blocking `GET /metrics`; returns the body.
fn scrape(url: &str) -> String {
    use std::io::{Read, Write};
    let authority = url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("not a metrics URL: {url}"));
    let mut s = std::net::TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: strata\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_string()
}

#[test]
fn listen_serves_metrics_after_its_listen_lines() {
    let _serial = serial();
    let (_listener, lines) = listen(&[
        "--tcp",
        "/ip4/127.0.0.1/tcp/0",
        "--security",
        "noise",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let recv = || lines.recv_timeout(Duration::from_secs(30)).unwrap();
    let listen_line = recv();
    let addr = listen_line
        .strip_prefix("LISTEN ")
        .unwrap_or_else(|| panic!("LISTEN first: {listen_line}"))
        .to_string();
    let metrics_line = recv();
    let url = metrics_line
        .strip_prefix("METRICS ")
        .unwrap_or_else(|| panic!("METRICS after LISTEN: {metrics_line}"));
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.ends_with("/metrics"), "{url}");
    assert!(!url.contains(":0/"), "the real port: {url}");

    let out = Command::new(BIN)
        .args(["dial", &addr, "--ping"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let body = scrape(url);
    let opened = "strata_connections_opened_total{direction=\"inbound\",transport=\"tcp\",\
                  security=\"/noise\",muxer=\"/yamux/1.0.0\"} 1";
    assert!(body.lines().any(|l| l == opened), "{body}");
    let pinged =
        "strata_streams_opened_total{protocol=\"/ipfs/ping/1.0.0\",direction=\"inbound\"} 1";
    assert!(body.lines().any(|l| l == pinged), "{body}");
    assert!(body.ends_with("# EOF\n"));
}

#[test]
fn rust_log_writes_logs_to_stderr_and_leaves_stdout_alone() {
    let _serial = serial();
    let (_listener, lines) = listen(&["--tcp", "/ip4/127.0.0.1/tcp/0"]);
    let addr = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    let dial = |rust_log: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["dial", &addr, "--ping"]).env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            cmd.env("RUST_LOG", filter);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success());
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (quiet_out, quiet_err) = dial(None);
    assert_eq!(quiet_err, "", "quiet by default");
    let (loud_out, loud_err) = dial(Some("debug"));
    assert!(loud_err.contains("DEBUG"), "{loud_err}");
    assert!(
        loud_err.contains("protocol=\"/ipfs/ping/1.0.0\""),
        "{loud_err}"
    );
    for out in [&quiet_out, &loud_out] {
        assert_eq!(out.lines().count(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!(v["ping_rtt_ms"].as_f64().unwrap() > 0.0);
    }
}

/// With a descriptor limit of 100 (below the 128 the default limits used to assume),
/// `strata listen` starts, serves a dial and exits 0 on SIGINT: the autoscaled limits
/// fit whatever the machine allows.
#[test]
fn listen_starts_under_a_descriptor_limit_of_100() {
    let _serial = serial();
    let mut command = Command::new("sh");
    command.arg("-c").arg(format!(
        "ulimit -n 100 && exec {BIN} listen --tcp /ip4/127.0.0.1/tcp/0 --seed 1"
    ));
    let (mut listener, lines) = run_with_lines(command);
    let addr = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    let out = Command::new(BIN)
        .args(["dial", &addr, "--seed", "2", "--ping"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    signal(&listener.0, libc::SIGINT);
    let (status, _) = wait_exit(&mut listener.0, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
}

/// Runs `strata dht ARGS --bootstrap ADDR`: its exit status, stdout and stderr.
fn dht(args: &[&str], bootstrap: &str) -> (bool, String, String) {
    let out = Command::new(BIN)
        .arg("dht")
        .args(args)
        .args(["--bootstrap", bootstrap])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The one JSON line of a successful `strata dht` command, its keys exactly `keys` in
/// order, its `peer_id` the node's own.
fn dht_line(out: (bool, String, String), keys: &[&str], own: Option<&str>) -> serde_json::Value {
    let (ok, stdout, stderr) = out;
    assert!(ok, "{stdout} {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stdout}");
    // Key order as printed (serde_json's map sorts, so read them from the text).
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    let mut printed: Vec<(usize, &str)> = v
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (lines[0].find(&format!("\"{k}\":")).unwrap(), k.as_str()))
        .collect();
    printed.sort();
    let printed: Vec<&str> = printed.into_iter().map(|(_, k)| k).collect();
    assert_eq!(printed, keys, "{}", lines[0]);
    assert!(v["ms"].as_f64().unwrap() >= 0.0);
    if let Some(own) = own {
        assert_eq!(v["peer_id"], own);
    }
    v
}

#[test]
fn dht_commands_print_their_json_lines_against_listen_kad_nodes() {
    let _serial = serial();
    // Three DHT servers: the first, and two joining through it.
    let (_first, lines) = listen(&["--tcp", "/ip4/127.0.0.1/tcp/0", "--seed", "41", "--kad"]);
    let boot = next_line(&lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    let mut others = Vec::new();
    let mut addrs = Vec::new();
    for (seed, ip) in [("42", "127.0.0.2"), ("43", "127.0.0.3")] {
        let (node, lines) = listen(&[
            "--tcp",
            &format!("/ip4/{ip}/tcp/0"),
            "--seed",
            seed,
            "--kad",
            "--bootstrap",
            &boot,
        ]);
        addrs.push(
            next_line(&lines, "LISTEN ")
                .strip_prefix("LISTEN ")
                .unwrap()
                .to_string(),
        );
        others.push(node);
    }
    let id = |seed: u64| keypair_from_seed(seed).public().to_peer_id().to_string();

    let own = id(50);
    dht_line(
        dht(&["put", "/strata/name", "hello", "--seed", "50"], &boot),
        &["peer_id", "ok", "ms"],
        Some(&own),
    );
    let v = dht_line(
        dht(&["get", "/strata/name", "--seed", "51"], &addrs[1]),
        &["peer_id", "value", "ms"],
        Some(&id(51)),
    );
    assert_eq!(v["value"], "hello");

    let cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
    dht_line(
        dht(&["provide", cid, "--seed", "52"], &boot),
        &["peer_id", "ok", "ms"],
        Some(&id(52)),
    );
    let v = dht_line(
        dht(&["providers", cid], &addrs[0]),
        &["peer_id", "providers", "ms"],
        None,
    );
    assert_eq!(v["providers"], serde_json::json!([id(52)]));

    let v = dht_line(
        dht(&["find-peer", &id(43)], &boot),
        &["peer_id", "addrs", "ms"],
        None,
    );
    let want = addrs[1].split("/p2p/").next().unwrap();
    assert_eq!(v["addrs"], serde_json::json!([want]));

    // By peer ID: that peer first; by key: the three servers, closest first.
    let v = dht_line(
        dht(&["closest", &id(42)], &boot),
        &["peer_id", "peers", "ms"],
        None,
    );
    assert_eq!(v["peers"][0], id(42));
    let v = dht_line(
        dht(&["closest", "some key"], &boot),
        &["peer_id", "peers", "ms"],
        None,
    );
    let mut peers: Vec<String> = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(peers.len(), 3);
    let target = strata::kad::KadKey::from_bytes(b"some key");
    let distance =
        |p: &String| strata::kad::KadKey::from_peer(&p.parse().unwrap()).distance(&target);
    assert!(peers.windows(2).all(|w| distance(&w[0]) < distance(&w[1])));
    peers.sort();
    let mut servers = vec![id(41), id(42), id(43)];
    servers.sort();
    assert_eq!(peers, servers);

    // Failures: one line on stderr, nothing on stdout, exit 1.
    for args in [
        vec!["get", "/strata/missing"],
        vec!["put", "no-namespace", "x"],
        vec!["providers", "not-a-cid"],
        vec!["find-peer", "not-a-peer"],
    ] {
        let (ok, stdout, stderr) = dht(&args, &boot);
        assert!(!ok && stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.starts_with("strata: error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let nobody = id(60);
    let (ok, _, stderr) = dht(
        &["get", "/strata/x"],
        &format!("/ip4/127.0.0.1/tcp/1/p2p/{nobody}"),
    );
    assert!(!ok && stderr.starts_with("strata: error: "), "{stderr}");
}

/// Starts `strata pubsub ARGS` with a channel of its stdout lines.
fn pubsub(args: &[&str]) -> (Running, mpsc::Receiver<String>) {
    let mut command = Command::new(BIN);
    command.arg("pubsub").args(args).stderr(Stdio::inherit());
    run_with_lines(command)
}

/// Every stdout line of a finished `strata pubsub`, and whether it exited 0.
fn finish(mut running: Running, lines: mpsc::Receiver<String>) -> (bool, Vec<String>) {
    let status = running.0.wait().unwrap();
    let mut out = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        out.push(line);
    }
    (status.success(), out)
}

/// Checks a finished `strata pubsub`: exit 0, `GOT want of want` last, `want` lines
/// `RECV <source> <source>:<i>` from `from` (never its own), and no other lines but
/// `LISTEN`.
fn check_pubsub(name: &str, run: Running, lines: mpsc::Receiver<String>, from: &str, want: usize) {
    let (ok, out) = finish(run, lines);
    assert!(ok, "{name}: {out:?}");
    assert_eq!(
        out.last().unwrap(),
        &format!("GOT {want} of {want}"),
        "{name}"
    );
    let recv: Vec<&String> = out.iter().filter(|l| l.starts_with("RECV ")).collect();
    assert_eq!(recv.len(), want, "{name}: {out:?}");
    let mut seen = std::collections::HashSet::new();
    for line in recv {
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(parts[1], from, "{name}: {line}");
        let (source, i) = parts[2].rsplit_once(':').unwrap();
        assert_eq!(source, from, "{line}");
        assert!(
            seen.insert(i.parse::<u32>().unwrap()),
            "{name}: twice: {line}"
        );
    }
    assert!(out
        .iter()
        .all(|l| l.starts_with("LISTEN ") || l.starts_with("RECV ") || l.starts_with("GOT ")));
}

#[test]
fn pubsub_nodes_print_listen_recv_and_got_lines() {
    let _serial = serial();
    let a_id = keypair_from_seed(31).public().to_peer_id().to_string();
    let b_id = keypair_from_seed(32).public().to_peer_id().to_string();
    // A pair: each waits for the other on the topic, publishes 3 and expects 3.
    let (a, a_lines) = pubsub(&[
        "--topic",
        "cli",
        "--seed",
        "31",
        "--publish",
        "3",
        "--expect",
        "3",
        "--timeout",
        "30",
    ]);
    let listen_line = next_line(&a_lines, "LISTEN ");
    let a_addr = listen_line.strip_prefix("LISTEN ").unwrap().to_string();
    assert!(a_addr.starts_with("/ip4/127.0.0.1/tcp/"), "{a_addr}");
    assert!(a_addr.ends_with(&format!("/p2p/{a_id}")), "{a_addr}");
    let (b, b_lines) = pubsub(&[
        "--topic",
        "cli",
        "--seed",
        "32",
        "--dial",
        &a_addr,
        "--publish",
        "3",
        "--expect",
        "3",
    ]);
    check_pubsub("a", a, a_lines, &b_id, 3);
    check_pubsub("b", b, b_lines, &a_id, 3);
}

#[test]
fn pubsub_messages_are_forwarded_through_a_middle_node() {
    let _serial = serial();
    let c_id = keypair_from_seed(43).public().to_peer_id().to_string();
    // M relays (runs until killed); B and C know only M. C publishes 30, 20 ms apart; B
    // must get 10 of them through M (the first few may go out before B has joined).
    let (_m, m_lines) = pubsub(&["--topic", "relay", "--seed", "41"]);
    let m_addr = next_line(&m_lines, "LISTEN ")
        .strip_prefix("LISTEN ")
        .unwrap()
        .to_string();
    let (b, b_lines) = pubsub(&[
        "--topic", "relay", "--seed", "42", "--dial", &m_addr, "--expect", "10",
    ]);
    next_line(&b_lines, "LISTEN ");
    let (_c, _c_lines) = pubsub(&[
        "--topic",
        "relay",
        "--seed",
        "43",
        "--dial",
        &m_addr,
        "--publish",
        "30",
    ]);
    check_pubsub("b", b, b_lines, &c_id, 10);
    // The relay printed what passed through it, too.
    let line = next_line(&m_lines, "RECV ");
    assert!(line.starts_with(&format!("RECV {c_id} {c_id}:")), "{line}");
}

#[test]
fn pubsub_expecting_more_than_arrives_exits_1_at_its_timeout() {
    let _serial = serial();
    let (run, lines) = pubsub(&[
        "--topic",
        "lonely",
        "--expect",
        "1",
        "--wait-ms",
        "100",
        "--timeout",
        "1",
    ]);
    let started = std::time::Instant::now();
    let (ok, out) = finish(run, lines);
    assert!(!ok);
    assert_eq!(out.last().unwrap(), "GOT 0 of 1");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A --dial address without /p2p/ is an error.
    let out = Command::new(BIN)
        .args(["pubsub", "--topic", "t", "--dial", "/ip4/127.0.0.1/tcp/1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with("strata: error: "), "{stderr}");
}
