//! The TCP accept loop rides out EMFILE: a child process (this test binary again) lowers
//! its descriptor limit and uses up every descriptor, a connection arrives, accept fails
//! with EMFILE and backs off, descriptors are freed, and the same listener accepts it.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD_ENV: &str = "STRATA_EMFILE_CHILD";

#[test]
fn accept_loop_survives_emfile() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "emfile_child",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(CHILD_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next_marked = |prefix: &str| -> String {
        for line in lines.by_ref() {
            let line = line.unwrap();
            // libtest may print "test emfile_child ... " on the same line first.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_string();
            }
        }
        panic!("the child ended before printing {prefix}");
    };
    let port: u16 = next_marked("EMFILE-CHILD-READY").parse().unwrap();

    // The kernel completes this handshake into the backlog; the child cannot take it yet.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(b"x").unwrap();
    let mut answer = [0u8; 2];
    conn.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"ok");

    let errors: u64 = next_marked("EMFILE-CHILD-ACCEPTED transient_errors=")
        .parse()
        .unwrap();
    assert!(
        errors >= 2,
        "the listener must have hit EMFILE and retried: {errors}"
    );
    drop(conn); // the child waits for our end before it exits
    assert!(child.wait().unwrap().success());
}

#[test]
#[ignore = "run by accept_loop_survives_emfile in a child process"]
fn emfile_child() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use strata_core::{Multiaddr, RawListener};
        use strata_transport::{TcpConfig, TcpTransport};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let t = TcpTransport::new(TcpConfig::default().reuseport(false));
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let mut listener = t.listen_tcp(&addr).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut errors = listener.transient_errors();

        lower_fd_limit(256);
        let mut hog = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hog.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    break;
                }
            }
        }
        // Printing needs no new descriptor: stdout is open already.
        println!("EMFILE-CHILD-READY {port}");
        std::io::stdout().flush().unwrap();

        let accept = tokio::spawn(async move { listener.accept().await });
        errors.wait_for(|n| *n >= 2).await.unwrap();
        drop(hog);
        let mut conn = accept
            .await
            .unwrap()
            .expect("the listener must survive EMFILE");
        let mut byte = [0u8; 1];
        conn.read_exact(&mut byte).await.unwrap();
        conn.write_all(b"ok").await.unwrap();
        conn.flush().await.unwrap();
        println!(
            "EMFILE-CHILD-ACCEPTED transient_errors={}",
            *errors.borrow()
        );
        std::io::stdout().flush().unwrap();
        // Wait for the parent to read the answer before linger-0 close could reset it.
        let _ = conn.read(&mut byte).await;
    });
}

fn lower_fd_limit(soft: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read from / write to the rlimit struct we pass,
    // which is a valid, initialised, exclusively borrowed value for the whole call.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = soft.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}
