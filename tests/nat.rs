//! Reachability through a real NAT, built from network namespaces: a private node
//! (10.77.1.2) behind a router that rewrites its connections to the router's public
//! address (10.78.0.1, nftables SNAT), and four public nodes in four networks
//! (10.78.1.2 to 10.78.4.2). Needs root, `ip` and `nft`; `.ci/run` installs them. The
//! private node's dials leave from its listen port, the NAT keeps the port, and the
//! public nodes' identify tells it the address they see.

mod netns;

use std::sync::mpsc;
use std::time::Duration;

use netns::{in_namespace, Namespaces};
use strata::core::{Multiaddr, PeerId};
use strata::host::HostBuilder;

/// The private node, four public ones, and the NAT between them.
fn nat_network() -> Namespaces {
    let tag = format!("s{}", std::process::id() % 100_000);
    let ns = Namespaces::new(&tag, &["p", "r", "u"]);
    let (vp, rp, ru, ur) = (
        format!("{tag}vp"),
        format!("{tag}rp"),
        format!("{tag}ru"),
        format!("{tag}ur"),
    );
    ns.link("p", &vp, "r", &rp);
    ns.link("r", &ru, "u", &ur);
    ns.ip("p", &["addr", "add", "10.77.1.2/24", "dev", &vp]);
    ns.ip("p", &["route", "add", "default", "via", "10.77.1.1"]);
    ns.ip("r", &["addr", "add", "10.77.1.1/24", "dev", &rp]);
    ns.ip("r", &["addr", "add", "10.78.0.1/24", "dev", &ru]);
    for k in 1..=4 {
        ns.ip(
            "r",
            &["route", "add", &format!("10.78.{k}.0/24"), "dev", &ru],
        );
        ns.ip(
            "u",
            &["addr", "add", &format!("10.78.{k}.2/24"), "dev", &ur],
        );
    }
    ns.ip("u", &["route", "add", "10.78.0.0/24", "dev", &ur]);
    ns.exec("r", &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
    ns.exec("r", &["nft", "add", "table", "ip", "nat"]);
    ns.exec(
        "r",
        &[
            "nft",
            "add",
            "chain",
            "ip",
            "nat",
            "post",
            "{ type nat hook postrouting priority 100 ; }",
        ],
    );
    ns.exec(
        "r",
        &[
            "nft",
            "add",
            "rule",
            "ip",
            "nat",
            "post",
            "oifname",
            &ru,
            "snat",
            "to",
            "10.78.0.1",
        ],
    );
    ns
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Waits until `cond` holds, checking every 20 ms, for at most 20 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_node_behind_a_nat_learns_its_public_address_from_four_networks() {
    let ns = nat_network();
    let (public_tx, public_rx) = mpsc::channel::<Vec<(PeerId, Multiaddr)>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let public = in_namespace(&ns.name("u"), move || {
        runtime().block_on(async move {
            let mut hosts = Vec::new();
            for k in 1..=4u64 {
                let ip = format!("10.78.{k}.2");
                hosts.push(
                    HostBuilder::tcp_on(700 + k, &ip)
                        .build_listening()
                        .await
                        .unwrap(),
                );
            }
            public_tx
                .send(hosts.iter().map(|(h, a)| (h.id(), a.clone())).collect())
                .unwrap();
            // Serve until the private side is done.
            let _ = tokio::task::spawn_blocking(move || done_rx.recv()).await;
            for (h, _) in hosts {
                h.close().await;
            }
        })
    });
    let peers = public_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    let private = in_namespace(&ns.name("p"), move || {
        runtime().block_on(async move {
            let (host, addr) = HostBuilder::tcp_on(800, "10.77.1.2")
                .build_listening()
                .await
                .unwrap();
            let port = addr.to_string().rsplit('/').next().unwrap().to_owned();
            let public: Multiaddr = format!("/ip4/10.78.0.1/tcp/{port}").parse().unwrap();
            // Three networks are not enough.
            let mut events = host.events();
            for (peer, a) in &peers[..3] {
                host.connect(*peer, std::slice::from_ref(a)).await.unwrap();
            }
            let mut identified = 0;
            while identified < 3 {
                if let Ok(strata::host::HostEvent::Identified { .. }) =
                    tokio::time::timeout(Duration::from_secs(20), events.recv())
                        .await
                        .expect("identify")
                {
                    identified += 1;
                }
            }
            let with_three = host.addrs();
            // The fourth makes it believed.
            let (fourth, a) = &peers[3];
            host.connect(*fourth, std::slice::from_ref(a))
                .await
                .unwrap();
            eventually("the public address is believed", || {
                host.addrs().contains(&public)
            })
            .await;
            // A peer leaves: three networks again, and the address is forgotten.
            host.disconnect(peers[0].0).await;
            eventually("the public address is forgotten", || {
                !host.addrs().contains(&public)
            })
            .await;
            let listen = host.listen_addrs();
            host.close().await;
            (with_three, public, listen)
        })
    });
    let result = private.join();
    let _ = done_tx.send(());
    public.join().unwrap();
    let (with_three, public, listen) = result.unwrap();
    assert!(!with_three.contains(&public), "{with_three:?}");
    assert!(!listen.contains(&public));
    drop(ns);
}
