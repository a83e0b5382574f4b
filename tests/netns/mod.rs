//! Real networks for tests, built from Linux network namespaces, veth pairs and nftables
//! (as root), with private addresses only, removed when the network is dropped (also
//! when the test fails). Code runs inside a namespace on a thread of its own that has
//! entered it ([`in_namespace`]); sockets it opens, and threads it starts, stay there.

#![allow(dead_code)]

use std::process::Command;

/// Runs a command (`ip`, `nft`, ...), panicking with its output if it fails.
pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces created for one test, deleted (with their interfaces) on drop.
pub struct Namespaces {
    names: Vec<String>,
}

impl Namespaces {
    /// Creates namespaces `<prefix><name>` for each name, loopback up in each. The
    /// prefix should be unique to the test run (the process ID, say).
    pub fn new(prefix: &str, names: &[&str]) -> Namespaces {
        let mut ns = Namespaces { names: Vec::new() };
        for n in names {
            let full = format!("{prefix}{n}");
            // A leftover of an earlier run that crashed: remove it first.
            let _ = Command::new("ip").args(["netns", "del", &full]).output();
            run(&["ip", "netns", "add", &full]);
            ns.names.push(full.clone());
            run(&["ip", "-n", &full, "link", "set", "lo", "up"]);
        }
        ns
    }

    /// The full name of namespace `name`.
    pub fn name(&self, name: &str) -> String {
        self.names
            .iter()
            .find(|n| n.ends_with(name))
            .cloned()
            .unwrap_or_else(|| panic!("no namespace {name}"))
    }

    /// A veth pair between two namespaces, both ends up.
    pub fn link(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        let (a, b) = (self.name(a), self.name(b));
        run(&[
            "ip", "link", "add", a_if, "netns", &a, "type", "veth", "peer", "name", b_if, "netns",
            &b,
        ]);
        run(&["ip", "-n", &a, "link", "set", a_if, "up"]);
        run(&["ip", "-n", &b, "link", "set", b_if, "up"]);
    }

    /// `ip -n <ns> <args...>`.
    pub fn ip(&self, ns: &str, args: &[&str]) {
        let name = self.name(ns);
        let mut all = vec!["ip", "-n", name.as_str()];
        all.extend_from_slice(args);
        run(&all);
    }

    /// Runs a command inside namespace `ns` (`ip netns exec`).
    pub fn exec(&self, ns: &str, args: &[&str]) {
        let name = self.name(ns);
        let mut all = vec!["ip", "netns", "exec", name.as_str()];
        all.extend_from_slice(args);
        run(&all);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns` (a full name), and
/// returns its result.
pub fn in_namespace<T, F>(ns: &str, f: F) -> std::thread::JoinHandle<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns takes a descriptor we own (open for the call) and a flag; it
        // changes only this thread's network namespace, which is what we want: every
        // socket this thread (and any thread it starts) opens lives there.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}
