//! Relays that delay traffic by a set time each way, to measure round trips on loopback:
//! [`TcpDelayRelay`] delays every chunk of a TCP connection (TCP's own handshake is not
//! delayed: the relay accepts and connects at once), [`UdpDelayRelay`] every datagram.
//! Order is kept in each direction. Dropping a relay stops it and every connection
//! through it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Chunks or datagrams in flight per direction before the reader waits.
const IN_FLIGHT: usize = 4096;

/// A TCP relay on 127.0.0.1 to `target` that delays each direction by `one_way`.
#[derive(Debug)]
pub struct TcpDelayRelay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TcpDelayRelay {
    /// Starts relaying to `target`.
    pub async fn start(target: SocketAddr, one_way: Duration) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            // Owned here: when the relay is dropped, this task and every pump end.
            let mut pumps = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                pumps.spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, one_way), pump(sr, cw, one_way));
                });
                // Reap finished pumps so the set does not grow without bound.
                while pumps.try_join_next().is_some() {}
            }
        });
        Ok(TcpDelayRelay { addr, task })
    }

    /// The address to dial instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for TcpDelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk delivered `delay` after it was read; ends `to`'s
/// writes when `from` ends.
async fn pump<R, W>(mut from: R, mut to: W, delay: Duration)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// A UDP relay on 127.0.0.1 to `target` that delays each datagram by `one_way`. Each
/// client address gets a socket of its own towards the target.
#[derive(Debug)]
pub struct UdpDelayRelay {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl UdpDelayRelay {
    /// Starts relaying to `target`.
    pub async fn start(target: SocketAddr, one_way: Duration) -> io::Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let task = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            let mut towards_target: HashMap<SocketAddr, mpsc::Sender<(Instant, Vec<u8>)>> =
                HashMap::new();
            let mut buf = vec![0u8; 65536];
            while let Ok((n, client)) = front.recv_from(&mut buf).await {
                let due = Instant::now() + one_way;
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    towards_target.entry(client)
                {
                    let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                        continue;
                    };
                    if back.connect(target).await.is_err() {
                        continue;
                    }
                    let back = Arc::new(back);
                    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
                    let out = back.clone();
                    tasks.spawn(async move {
                        while let Some((due, datagram)) = rx.recv().await {
                            tokio::time::sleep_until(due).await;
                            let _ = out.send(&datagram).await;
                        }
                    });
                    let front = front.clone();
                    tasks.spawn(async move {
                        let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
                        let deliver = async {
                            while let Some((due, datagram)) = rx.recv().await {
                                tokio::time::sleep_until(due).await;
                                let _ = front.send_to(&datagram, client).await;
                            }
                        };
                        let receive = async move {
                            let mut buf = vec![0u8; 65536];
                            while let Ok(n) = back.recv(&mut buf).await {
                                let due = Instant::now() + one_way;
                                if tx.send((due, buf[..n].to_vec())).await.is_err() {
                                    return;
                                }
                            }
                        };
                        tokio::join!(deliver, receive);
                    });
                    slot.insert(tx);
                }
                if let Some(tx) = towards_target.get(&client) {
                    // A full queue drops the datagram, as a congested link would.
                    let _ = tx.try_send((due, buf[..n].to_vec()));
                }
            }
        });
        Ok(UdpDelayRelay { addr, task })
    }

    /// The address to send to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for UdpDelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
