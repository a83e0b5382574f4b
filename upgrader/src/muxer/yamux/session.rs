//! What one yamux connection shares between its handle, its streams and its driver task:
//! one short lock over the streams, the queue of frames to send, the windows reserved
//! from the resource scope, and the wakers.
//!
//! Nothing under the state lock waits. Streams and the handle queue frames and read what
//! the driver delivered; the driver moves bytes between the queue, the socket and the
//! streams' buffers. One shortcut: a writer that finds nothing queued ahead of it writes
//! its data frame straight into the secured stream (see [`IoCell`]), so that the task
//! that writes pays for its own encryption and no copy into the queue is made.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use strata_core::rcmgr::priority;
use strata_core::{CloseReason, ConnScope, Direction, PeerId, Reservation, ResourceError};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::config::YamuxConfig;
use super::frame::{flags, FrameType, Header, HEADER_LEN, INITIAL_WINDOW};
use crate::security::SecureStream;

/// Answers to the remote's pings that may wait in the write queue at once. A peer
/// measuring its round trip has one ping in flight; a burst gets its answers in batches
/// of this many, and a flood from a peer that does not read stops our reading instead
/// of growing the queue.
pub(crate) const MAX_QUEUED_PING_ANSWERS: usize = 8;

/// The largest data frame a writer writes through itself (see
/// [`Session::write_through`]). Larger frames go through the queue, so that the driver
/// encrypts and sends one chunk while the writer copies the next: on two cores, bulk
/// transfers run faster pipelined than written through.
pub(crate) const WRITE_THROUGH_MAX: usize = 16 * 1024;

/// Written frame buffers kept for reuse (see `State::spare_frames`).
const MAX_SPARE_FRAMES: usize = 2;

/// Bytes of control frames (window updates, acknowledgements, resets, ping answers) that
/// may wait in the write queue before the driver stops reading what could make more:
/// a remote that sends SYNs or pings and never reads our answers is held back by its own
/// flow control instead of growing our queue.
pub(crate) const MAX_QUEUED_CONTROL: usize = 16 * 1024;

/// The write queue's memory is booked in steps of this much (see `State::queue_held`).
const QUEUE_BOOKING_STEP: usize = 64 * 1024;

/// Refused inbound stream IDs remembered (see `State::refused`).
const MAX_REMEMBERED_REFUSALS: usize = 1024;

/// The receive windows a new stream may get, largest first: the specification's 256 KiB
/// while memory allows, smaller ones when it runs short (the remote still may send the
/// first 256 KiB, which are then reserved as they arrive).
const WINDOW_TIERS: [u32; 3] = [INITIAL_WINDOW, 64 * 1024, 16 * 1024];

/// Who reset a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reset {
    Local,
    Remote,
}

/// One stream's state.
pub(crate) struct StreamState {
    /// Received and not yet read.
    pub(crate) recv: BytesMut,
    /// Bytes the remote may still send before our next window update.
    pub(crate) recv_credit: u32,
    /// The stream's current receive window (what `recv_credit`, `recv` and `consumed`
    /// add up to).
    pub(crate) recv_window: u32,
    /// When the last window update went out (window growth compares it with the RTT).
    pub(crate) window_epoch: Instant,
    /// Bytes we may still send.
    pub(crate) send_credit: u32,
    pub(crate) read_waker: Option<Waker>,
    pub(crate) write_waker: Option<Waker>,
    /// The writer waiting for room in the connection's write queue (the stream is then
    /// in the session's line), and the bytes it wants to queue.
    room_waker: Option<Waker>,
    room_wanted: usize,
    /// SYN (an outbound stream the remote has not heard of yet) or ACK (an inbound
    /// stream not yet acknowledged), carried by the next frame we send on it; else 0.
    pub(crate) open_flag: u16,
    /// We sent FIN.
    pub(crate) local_fin: bool,
    /// The remote sent FIN.
    pub(crate) remote_fin: bool,
    pub(crate) reset: Option<Reset>,
    /// Bytes reserved for this stream's receive buffer: its window, and while a stream
    /// with a shrunken window still receives its first 256 KiB, what has arrived. The
    /// buffer's capacity never exceeds it.
    pub(crate) reserved: usize,
}

impl StreamState {
    fn new(open_flag: u16, send_credit: u32, window: u32) -> Self {
        StreamState {
            recv: BytesMut::new(),
            recv_credit: INITIAL_WINDOW,
            recv_window: window,
            window_epoch: Instant::now(),
            send_credit,
            read_waker: None,
            write_waker: None,
            room_waker: None,
            room_wanted: 0,
            open_flag,
            local_fin: false,
            remote_fin: false,
            reset: None,
            reserved: window as usize,
        }
    }

    /// Makes room for `n` more received bytes in the buffer without its capacity passing
    /// what is reserved for it (`BytesMut` alone would double it).
    pub(crate) fn make_room(&mut self, n: usize) {
        let recv = &mut self.recv;
        if recv.capacity() - recv.len() >= n || recv.try_reclaim(n) {
            return;
        }
        let needed = recv.len() + n;
        let cap = (recv.capacity() * 2).clamp(needed, self.reserved.max(needed));
        let mut fresh = BytesMut::with_capacity(cap);
        fresh.extend_from_slice(recv);
        *recv = fresh;
    }

    /// The window credit to give back now: what the remote may send again without the
    /// stream holding more than its window.
    fn grantable(&self) -> u32 {
        let held = u64::from(self.recv_credit) + self.recv.len() as u64;
        u64::from(self.recv_window).saturating_sub(held) as u32
    }

    pub(crate) fn wake(&mut self) {
        if let Some(w) = self.read_waker.take() {
            w.wake();
        }
        if let Some(w) = self.write_waker.take() {
            w.wake();
        }
        if let Some(w) = self.room_waker.take() {
            w.wake();
        }
    }
}

/// Hashes stream IDs for the stream map, which every frame looks up: the ID mixed with a
/// random key (per connection) through a 64-bit finalizer (two multiplies and three
/// xor-shifts, a bijection, so distinct IDs never share a whole hash). SipHash cost
/// several percent of the CPU with thousands of streams. The remote picks its stream
/// IDs, so the key is secret; and the live streams a remote can hold are bounded by
/// `max_streams` in any case.
#[derive(Clone)]
pub(crate) struct StreamIdHash(u64);

impl StreamIdHash {
    fn random() -> Self {
        // A fresh RandomState is seeded from the OS (then per thread, incremented):
        // hashing nothing with it yields a value no remote can predict.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        StreamIdHash(seed)
    }
}

impl BuildHasher for StreamIdHash {
    type Hasher = StreamIdHasher;

    fn build_hasher(&self) -> StreamIdHasher {
        StreamIdHasher {
            key: self.0,
            hash: 0,
        }
    }
}

/// The hasher [`StreamIdHash`] builds.
pub(crate) struct StreamIdHasher {
    key: u64,
    hash: u64,
}

impl Hasher for StreamIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u32` is used for stream IDs; any other input still mixes well.
        for b in bytes {
            self.write_u32(u32::from(*b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.hash = self.hash.rotate_left(32) ^ u64::from(n);
    }

    fn finish(&self) -> u64 {
        // MurmurHash3's fmix64: every output bit depends on every input bit, so both
        // the low bits (the bucket) and the top seven (the tag) are well mixed.
        let mut h = self.hash ^ self.key;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Everything under the lock.
pub(crate) struct State {
    pub(crate) streams: HashMap<u32, StreamState, StreamIdHash>,
    next_id: u32,
    /// Frames waiting for the driver, each a whole frame (header and body).
    pub(crate) out: VecDeque<Bytes>,
    /// Control frames queued after the last frame in `out`, gathered in one buffer (a
    /// frame each would cost several times its 12 bytes of heap); logically the end of
    /// the queue.
    control_tail: BytesMut,
    /// Bytes in `out` and `control_tail` plus those the driver has taken and not yet
    /// written.
    pub(crate) out_bytes: usize,
    /// Bytes of control frames queued since the driver last took the queue (see
    /// [`MAX_QUEUED_CONTROL`]).
    pub(crate) control_queued: usize,
    /// Buffers of written data frames, for the next frames to be copied into: fresh
    /// memory for every frame of a bulk transfer costs page faults. What they hold and
    /// what is queued stay within the queue limit together.
    spare_frames: Vec<BytesMut>,
    spare_bytes: usize,
    /// The write queue's memory: booked in steps of [`QUEUE_BOOKING_STEP`] ahead of the
    /// data frames and spare buffers it holds, given back when it is idle (nothing
    /// queued, no spare buffer).
    queue_held: Reservation,
    driver: Option<Waker>,
    /// Streams whose writer waits for room in the queue, first come first woken (each
    /// stream's waker and wanted bytes are in its state, so a writer polled twice waits
    /// once, and a stream that is gone takes no room).
    space: VecDeque<u32>,
    /// Inbound streams waiting for `accept_stream`.
    pub(crate) inbound: VecDeque<u32>,
    /// Stream handles alive (inbound ones in the backlog included).
    pub(crate) live: usize,
    /// Window bytes reserved across all streams, from the connection's memory. It
    /// outlives the connection's slot: streams keep what they still buffer after the
    /// connection ends, until it is read or dropped.
    pub(crate) windows: Reservation,
    pub(crate) ended: Option<CloseReason>,
    /// Go Away is queued (or sent): no new streams either way.
    pub(crate) closing: bool,
    /// The remote sent Go Away: it accepts no new streams from us.
    pub(crate) remote_go_away: bool,
    pub(crate) rtt: Option<Duration>,
    /// Our ping in flight (its value and when it left), for the RTT.
    pub(crate) ping: Option<(u32, Instant)>,
    /// Answers to the remote's pings waiting in the queue: at most
    /// [`MAX_QUEUED_PING_ANSWERS`], so that a ping flood cannot grow the queue (past it,
    /// the driver reads nothing more until the queue is written).
    pub(crate) ping_answers_queued: usize,
    /// A writer wrote through and could not flush all of it: the driver flushes.
    pub(crate) flush_wanted: bool,
    /// Inbound stream IDs we refused (the most recent [`MAX_REMEMBERED_REFUSALS`]): a
    /// remote that opens one of them again breaks the protocol (IDs are never reused),
    /// instead of getting a reset for every SYN it repeats.
    refused: std::collections::HashSet<u32, StreamIdHash>,
    refused_order: VecDeque<u32>,
    /// A writer is writing a frame through (outside this lock): the driver leaves the
    /// queue alone until it is done, so that whatever the writer leaves unwritten goes
    /// first.
    pub(crate) writing_through: bool,
    /// The driver found the secured stream taken by a writer: the writer wakes it.
    pub(crate) io_wanted: bool,
    /// The connection's resource scope (its slot) until the connection ends.
    scope: Option<Arc<ConnScope>>,
}

/// The connection's secured stream. The driver reads it and writes what is queued;
/// a writer that finds the queue empty writes its frame through it directly. Each holds
/// the lock only for one poll call. `None` once the driver has ended, so the socket goes
/// with the driver, however long stream handles live on.
pub(crate) struct IoCell(Mutex<Option<Box<dyn SecureStream>>>);

impl IoCell {
    /// Waits for the lock (the driver: never held across an await, only for one call).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Option<Box<dyn SecureStream>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock if free now (writers: when the driver is busy with the socket, they
    /// queue instead of waiting).
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, Option<Box<dyn SecureStream>>>> {
        match self.0.try_lock() {
            Ok(guard) => Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Takes the stream out, for the driver to drop as it ends.
    pub(crate) fn take(&self) -> Option<Box<dyn SecureStream>> {
        self.lock().take()
    }
}

/// The shared part of a connection.
pub(crate) struct Session {
    pub(crate) peer: PeerId,
    pub(crate) config: YamuxConfig,
    /// Whether we dialed (the client opens odd stream IDs).
    pub(crate) direction: Direction,
    /// The secured stream underneath.
    pub(crate) io: IoCell,
    state: Mutex<State>,
    /// Wakes `accept_stream` callers.
    pub(crate) accept: Notify,
    /// Why the connection ended, once it has.
    pub(crate) reason: watch::Sender<Option<CloseReason>>,
}

/// Why opening a stream failed.
pub(crate) enum OpenError {
    Closed(CloseReason),
    Limit,
    Resource(ResourceError),
    Exhausted,
}

impl Session {
    pub(crate) fn new(
        peer: PeerId,
        config: YamuxConfig,
        direction: Direction,
        scope: Arc<ConnScope>,
        io: Box<dyn SecureStream>,
    ) -> Self {
        Session {
            peer,
            direction,
            io: IoCell(Mutex::new(Some(io))),
            state: Mutex::new(State {
                streams: HashMap::with_hasher(StreamIdHash::random()),
                next_id: if direction == Direction::Outbound {
                    1
                } else {
                    2
                },
                out: VecDeque::new(),
                control_tail: BytesMut::new(),
                out_bytes: 0,
                control_queued: 0,
                spare_frames: Vec::new(),
                spare_bytes: 0,
                queue_held: scope.memory().empty(),
                driver: None,
                space: VecDeque::new(),
                inbound: VecDeque::new(),
                live: 0,
                windows: scope.memory().empty(),
                ended: None,
                closing: false,
                remote_go_away: false,
                rtt: None,
                ping: None,
                ping_answers_queued: 0,
                refused: std::collections::HashSet::with_hasher(StreamIdHash::random()),
                refused_order: VecDeque::new(),
                flush_wanted: false,
                writing_through: false,
                io_wanted: false,
                scope: Some(scope),
            }),
            accept: Notify::new(),
            reason: watch::channel(None).0,
            config,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every change under the lock is made whole before it is released; a panic in a
        // waker cannot leave the state half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a data frame straight into the secured stream, in the writer's task, if the
    /// queue is empty and no one else is writing through: no frame can then overtake
    /// it, and none can cut it. The state lock is not held while the frame is written
    /// (encryption and the socket write take long); `writing_through` holds the driver
    /// off the queue meanwhile, and what the stream did not take is queued first in
    /// line afterwards. Returns false when the frame was not taken at all, for the
    /// caller to queue as usual. `st` is released during the write and taken again.
    pub(crate) fn write_through<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        header: Header,
        body: &[u8],
        cx: &mut Context<'_>,
    ) -> (bool, MutexGuard<'a, State>) {
        if body.len() > WRITE_THROUGH_MAX
            || st.out_bytes > 0
            || st.closing
            || st.writing_through
            || st.ended.is_some()
        {
            return (false, st);
        }
        st.writing_through = true;
        drop(st);
        let (done, flushed) = self.write_frame(header, body, cx);
        let mut st = self.lock();
        st.writing_through = false;
        let total = HEADER_LEN + body.len();
        if done > 0 && done < total {
            // What the stream did not take must be queued, whatever the books say (it
            // is at most a small frame).
            let _ = st.book_queue_for(total - done);
            let head = header.encode();
            let mut rest = BytesMut::with_capacity(total - done);
            if done < HEADER_LEN {
                rest.put_slice(&head[done..]);
                rest.put_slice(body);
            } else {
                rest.put_slice(&body[done - HEADER_LEN..]);
            }
            st.out_bytes += rest.len();
            st.out.push_front(rest.freeze());
            st.wake_driver();
        } else if done == total && !flushed {
            st.flush_wanted = true;
            st.wake_driver();
        }
        if std::mem::take(&mut st.io_wanted) || !st.out.is_empty() {
            // The driver waited for the stream, or others queued behind us.
            st.wake_driver();
        }
        (done > 0, st)
    }

    /// Writes as much of one frame as the secured stream takes now, then flushes:
    /// (bytes taken, whether all of it was flushed). Takes nothing if a writer or the
    /// driver holds the stream.
    fn write_frame(&self, header: Header, body: &[u8], cx: &mut Context<'_>) -> (usize, bool) {
        let Some(mut guard) = self.io.try_lock() else {
            return (0, false);
        };
        let Some(io) = guard.as_mut() else {
            return (0, false);
        };
        let head = header.encode();
        let total = HEADER_LEN + body.len();
        let mut done = 0;
        while done < total {
            let slices = if done < HEADER_LEN {
                [IoSlice::new(&head[done..]), IoSlice::new(body)]
            } else {
                [IoSlice::new(&body[done - HEADER_LEN..]), IoSlice::new(&[])]
            };
            match Pin::new(&mut **io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(n)) if n > 0 => done += n,
                // Pushed back, or failed: the driver writes the rest (and meets the
                // error, if any, and ends the connection with it).
                _ => break,
            }
        }
        let flushed =
            done == total && matches!(Pin::new(&mut **io).poll_flush(cx), Poll::Ready(Ok(())));
        (done, flushed)
    }

    /// True when `id` is one the remote may open (the other parity than ours).
    pub(crate) fn is_remote_id(&self, id: u32) -> bool {
        let ours_odd = self.direction == Direction::Outbound;
        id != 0 && (id % 2 == 1) != ours_odd
    }

    /// Opens an outbound stream: checks the limits and reserves its initial window. The
    /// remote hears of it with its first frame.
    pub(crate) fn open(&self) -> Result<u32, OpenError> {
        let mut st = self.lock();
        if let Some(reason) = &st.ended {
            return Err(OpenError::Closed(reason.clone()));
        }
        if st.closing || st.remote_go_away {
            return Err(OpenError::Closed(if st.closing {
                CloseReason::Local
            } else {
                CloseReason::Remote
            }));
        }
        if st.live >= self.config.max_streams {
            return Err(OpenError::Limit);
        }
        let id = st.next_id;
        if id > u32::MAX - 2 {
            return Err(OpenError::Exhausted);
        }
        let window = st
            .reserve_initial_window(&self.config)
            .map_err(OpenError::Resource)?;
        st.next_id = id + 2;
        st.live += 1;
        st.streams
            .insert(id, StreamState::new(flags::SYN, INITIAL_WINDOW, window));
        Ok(id)
    }

    /// Takes the next inbound stream from the backlog and acknowledges it.
    pub(crate) fn take_inbound(&self) -> Result<Option<u32>, CloseReason> {
        let mut st = self.lock();
        if let Some(id) = st.inbound.pop_front() {
            st.send_open_ack(id);
            return Ok(Some(id));
        }
        match &st.ended {
            Some(reason) => Err(reason.clone()),
            None => Ok(None),
        }
    }

    /// The stream handle `id` is gone: tell the remote what it needs to know and forget
    /// the stream.
    pub(crate) fn drop_stream(&self, id: u32) {
        let mut st = self.lock();
        let Some(s) = st.streams.remove(&id) else {
            return;
        };
        st.live = st.live.saturating_sub(1);
        st.release_window(s.reserved);
        if st.ended.is_some() || s.reset.is_some() || s.open_flag == flags::SYN {
            // Nothing to say: the connection is gone, the stream was reset, or the remote
            // never heard of it.
            return;
        }
        match (s.local_fin, s.remote_fin) {
            // Dropped while open: the remote must not wait for more.
            (false, false) => st.queue_control(Header::new(
                FrameType::WindowUpdate,
                flags::RST | s.open_flag,
                id,
                0,
            )),
            // The remote finished; finish our side cleanly too.
            (false, true) => st.queue_control(Header::new(
                FrameType::WindowUpdate,
                flags::FIN | s.open_flag,
                id,
                0,
            )),
            // We finished: whatever the remote still sends is answered with RST, as for
            // any stream we no longer know.
            (true, _) => {}
        }
    }

    /// Records the end and wakes everyone: readers drain what they have, then fail.
    /// Returns the scope (the connection's slot) for the caller to drop outside the lock.
    pub(crate) fn end(&self, reason: CloseReason) -> Option<Arc<ConnScope>> {
        let scope = {
            let mut st = self.lock();
            if st.ended.is_none() {
                st.ended = Some(reason.clone());
            }
            for s in st.streams.values_mut() {
                s.wake();
            }
            st.space.clear();
            st.out.clear();
            st.control_tail = BytesMut::new();
            st.out_bytes = 0;
            st.drop_spare_frames();
            // The windows go back now, but what streams still buffer stays reserved
            // (its handle may be read long after) until it is read or dropped.
            let mut kept = 0;
            for s in st.streams.values_mut() {
                if s.recv.is_empty() {
                    s.recv = BytesMut::new();
                }
                s.reserved = s.reserved.min(s.recv.capacity());
                kept += s.reserved;
            }
            let total = st.windows.size();
            st.windows.shrink(total.saturating_sub(kept));
            st.scope.take()
        };
        self.reason.send_replace(Some(reason));
        self.accept.notify_waiters();
        scope
    }

    /// Queues Go Away (once): no new streams either way, open ones go on.
    pub(crate) fn go_away(&self) {
        let mut st = self.lock();
        if st.closing || st.ended.is_some() {
            return;
        }
        st.closing = true;
        st.queue_control(Header::new(
            FrameType::GoAway,
            0,
            0,
            super::frame::go_away::NORMAL,
        ));
    }

    /// Registers the driver's waker.
    pub(crate) fn set_driver_waker(&self, waker: &Waker) {
        let mut st = self.lock();
        match &st.driver {
            Some(w) if w.will_wake(waker) => {}
            _ => st.driver = Some(waker.clone()),
        }
    }
}

impl State {
    /// The connection's memory: it outlives the connection's slot.
    pub(crate) fn memory(&self) -> &strata_core::ScopeMemory {
        self.windows.memory()
    }

    /// Reserves the window of a new stream: the largest of [`WINDOW_TIERS`] that fits
    /// (a smaller window rather than a refusal while memory runs short). Windows are
    /// data the remote sends: they ask with `HIGH` priority, so that what the connection
    /// needs to go on (its security and muxer buffers) always finds room.
    fn reserve_initial_window(&mut self, config: &YamuxConfig) -> Result<u32, ResourceError> {
        let mut refused = None;
        for window in WINDOW_TIERS {
            match self.reserve_window(config, window as usize, priority::HIGH) {
                Ok(()) => return Ok(window),
                Err(e) => refused = Some(e),
            }
        }
        Err(refused.unwrap_or_else(|| ResourceError {
            scope: "yamux stream window".into(),
            resource: strata_core::rcmgr::Resource::Memory,
            limit: 0,
        }))
    }

    /// `len` more body bytes are arriving for stream `id`: makes sure its buffer may
    /// hold them. A stream whose window shrank may still receive the specification's
    /// first 256 KiB; those bytes are reserved as they come, and a failure is an error
    /// (the caller resets the stream).
    pub(crate) fn reserve_arrival(
        &mut self,
        config: &YamuxConfig,
        id: u32,
        len: usize,
    ) -> Result<(), ResourceError> {
        let Some(s) = self.streams.get(&id).filter(|s| s.reset.is_none()) else {
            return Ok(());
        };
        let needed = s.recv.len() + len;
        let more = needed.saturating_sub(s.reserved);
        if more == 0 {
            return Ok(());
        }
        self.reserve_window(config, more, priority::HIGH)?;
        if let Some(s) = self.streams.get_mut(&id) {
            s.reserved += more;
        }
        Ok(())
    }

    /// Gives back what stream `id` holds beyond its window and its buffer (a shrunken
    /// window's first bytes, once read; everything once the connection ended and the
    /// buffer is drained).
    pub(crate) fn trim_reservation(&mut self, id: u32) {
        let ended = self.ended.is_some();
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if ended && s.recv.is_empty() {
            s.recv = BytesMut::new();
        }
        let keep = if ended {
            s.recv.capacity()
        } else {
            (s.recv_window as usize).max(s.recv.capacity())
        };
        let excess = s.reserved.saturating_sub(keep);
        if excess > 0 {
            s.reserved -= excess;
            self.release_window(excess);
        }
    }

    /// Reserves `size` bytes of window: within the connection's cap, then from the scope.
    pub(crate) fn reserve_window(
        &mut self,
        config: &YamuxConfig,
        size: usize,
        prio: u8,
    ) -> Result<(), ResourceError> {
        if self.ended.is_some() {
            return Err(ResourceError {
                scope: "yamux connection (ended)".into(),
                resource: strata_core::rcmgr::Resource::Memory,
                limit: 0,
            });
        }
        if let Some(cap) = config.max_connection_receive_window {
            if self.windows.size().saturating_add(size) > cap {
                return Err(ResourceError {
                    scope: "yamux connection window".into(),
                    resource: strata_core::rcmgr::Resource::Memory,
                    limit: cap as u64,
                });
            }
        }
        self.windows.grow(size, prio)
    }

    pub(crate) fn release_window(&mut self, size: usize) {
        self.windows.shrink(size);
    }

    pub(crate) fn wake_driver(&mut self) {
        if let Some(w) = &self.driver {
            w.wake_by_ref();
        }
    }

    /// Queues a frame without a body, gathered with the control frames queued right
    /// before it. Control frames count in the write queue's bytes; once
    /// [`MAX_QUEUED_CONTROL`] of them wait, the driver stops reading what could make
    /// more (see `State::may_read_more`).
    pub(crate) fn queue_control(&mut self, header: Header) {
        self.out_bytes += HEADER_LEN;
        self.control_queued += HEADER_LEN;
        self.control_tail.extend_from_slice(&header.encode());
        self.wake_driver();
    }

    /// Ends the gathered control frames, so that what is queued next goes after them.
    fn seal_control(&mut self) {
        if !self.control_tail.is_empty() {
            let batch = self.control_tail.split().freeze();
            self.out.push_back(batch);
        }
    }

    /// Everything queued, in order, for the driver to write (the control frames
    /// gathered at the end included).
    pub(crate) fn take_queue(&mut self, into: &mut VecDeque<Bytes>) {
        self.seal_control();
        std::mem::swap(into, &mut self.out);
        self.ping_answers_queued = 0;
        self.control_queued = 0;
    }

    /// True when nothing waits in the queue.
    pub(crate) fn queue_is_empty(&self) -> bool {
        self.out.is_empty() && self.control_tail.is_empty()
    }

    /// Whether the driver may read frames that could make us queue an answer: not while
    /// ping answers or control frames pile up unwritten (the remote does not read them).
    pub(crate) fn may_read_more(&self) -> bool {
        self.ping_answers_queued < MAX_QUEUED_PING_ANSWERS
            && self.control_queued < MAX_QUEUED_CONTROL
    }

    /// Books room for `extra` more bytes in the write queue (beside its data frames and
    /// spare buffers), in steps of [`QUEUE_BOOKING_STEP`].
    pub(crate) fn book_queue_for(&mut self, extra: usize) -> Result<(), ResourceError> {
        let need = self.out_bytes + self.spare_bytes + extra;
        let held = self.queue_held.size();
        if need > held {
            let step = (need - held).div_ceil(QUEUE_BOOKING_STEP) * QUEUE_BOOKING_STEP;
            self.queue_held.grow(step, priority::ALWAYS)?;
        }
        Ok(())
    }

    /// Gives the write queue's memory back once it holds nothing.
    pub(crate) fn unbook_queue_if_idle(&mut self) {
        if self.out_bytes == 0 && self.spare_frames.is_empty() && self.out.is_empty() {
            let held = self.queue_held.size();
            self.queue_held.shrink(held);
        }
    }

    /// Queues a data frame: header and body in one buffer, so they leave in one write.
    /// The queue's memory is booked first; when it cannot be, nothing is queued.
    pub(crate) fn queue_data(&mut self, header: Header, body: &[u8]) -> Result<(), ResourceError> {
        // A spare buffer takes the frame without new memory; only a fresh one is booked.
        let reuses = body.len() > WRITE_THROUGH_MAX
            && self
                .spare_frames
                .last()
                .is_some_and(|b| b.capacity() >= HEADER_LEN + body.len());
        if !reuses {
            self.book_queue_for(HEADER_LEN + body.len())?;
        }
        self.seal_control();
        // Spare buffers are large: a small frame takes fresh memory of its own size.
        let spare = if reuses {
            self.spare_frames.pop()
        } else {
            None
        };
        let mut frame = match spare {
            Some(mut spare) => {
                self.spare_bytes -= spare.capacity();
                spare.clear();
                spare.reserve(HEADER_LEN + body.len());
                spare
            }
            None => BytesMut::with_capacity(HEADER_LEN + body.len()),
        };
        frame.put_slice(&header.encode());
        frame.put_slice(body);
        self.out_bytes += frame.len();
        self.out.push_back(frame.freeze());
        self.wake_driver();
        Ok(())
    }

    /// Keeps the buffers of written frames for reuse, as far as the queue limit allows.
    pub(crate) fn keep_spare_frames(&mut self, written: &mut Vec<BytesMut>, limit: usize) {
        for frame in written.drain(..) {
            let size = frame.capacity();
            if self.spare_frames.len() < MAX_SPARE_FRAMES
                && self.out_bytes + self.spare_bytes + size <= limit
                && self.book_queue_for(size).is_ok()
            {
                self.spare_bytes += size;
                self.spare_frames.push(frame);
            }
        }
    }

    /// Lets go of the spare frame buffers (the connection has nothing to write), and of
    /// the queue's memory if nothing is queued either.
    pub(crate) fn drop_spare_frames(&mut self) {
        self.spare_frames = Vec::new();
        self.spare_bytes = 0;
        self.unbook_queue_if_idle();
    }

    /// Room in the queue for data, for a writer; registers `waker` when there is none.
    /// Whether the queue has room for stream `id`'s writer, wanting `wanted` bytes; if
    /// not, the writer waits in line (once, however often it is polled).
    pub(crate) fn has_room(&mut self, limit: usize, id: u32, waker: &Waker, wanted: usize) -> bool {
        if self.out_bytes < limit {
            return true;
        }
        let Some(s) = self.streams.get_mut(&id) else {
            // Gone: the caller finds out when it looks the stream up again.
            return true;
        };
        s.room_wanted = wanted;
        if s.room_waker.replace(waker.clone()).is_none() {
            self.space.push_back(id);
        }
        false
    }

    /// The driver wrote `n` bytes. Once the queue is half empty, wakes the writers first
    /// in line whose writes fit in the room, not every writer waiting: with thousands of
    /// streams writing at once, waking them all for a few slots would cost a pass over
    /// every stream per slot. When the queue is empty, every writer still waiting is
    /// woken, so a writer woken in vain (its write was cancelled) cannot strand the rest.
    pub(crate) fn written(&mut self, n: usize, limit: usize) {
        self.out_bytes = self.out_bytes.saturating_sub(n);
        if self.out_bytes == 0 {
            for id in self.space.drain(..) {
                if let Some(w) = self.streams.get_mut(&id).and_then(|s| s.room_waker.take()) {
                    w.wake();
                }
            }
        } else if self.out_bytes <= limit / 2 {
            let mut room = limit - self.out_bytes;
            while room > 0 {
                let Some(id) = self.space.pop_front() else {
                    break;
                };
                let Some(s) = self.streams.get_mut(&id) else {
                    continue;
                };
                if let Some(w) = s.room_waker.take() {
                    room = room.saturating_sub(s.room_wanted.max(1));
                    w.wake();
                }
            }
        }
    }

    /// Acknowledges an inbound stream the application took.
    fn send_open_ack(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if s.open_flag != flags::ACK {
            return;
        }
        s.open_flag = 0;
        if s.reset.is_none() && self.ended.is_none() {
            self.queue_control(Header::new(FrameType::WindowUpdate, flags::ACK, id, 0));
        }
    }

    /// After the application read from stream `id`: once half its window can be given
    /// back, gives the credit back, growing the window when the stream is read fast
    /// (within four round trips) and memory allows.
    pub(crate) fn maybe_grant(&mut self, config: &YamuxConfig, id: u32) {
        let rtt = self.rtt;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let delta_base = s.grantable();
        if s.remote_fin || s.reset.is_some() || delta_base < s.recv_window / 2 {
            return;
        }
        let now = Instant::now();
        let fast = rtt.is_some_and(|rtt| now.duration_since(s.window_epoch) < rtt * 4);
        let mut grow = 0;
        if fast && s.recv_window < config.max_stream_receive_window {
            let target = s
                .recv_window
                .saturating_mul(2)
                .min(config.max_stream_receive_window);
            grow = target - s.recv_window;
        }
        s.window_epoch = now;
        let open_flag = std::mem::take(&mut s.open_flag);
        // A shrunken window's first bytes were reserved as they came; what is beyond the
        // window and the buffer goes back before the window may grow.
        self.trim_reservation(id);
        if grow > 0
            && self
                .reserve_window(config, grow as usize, priority::LOW)
                .is_ok()
        {
            if let Some(s) = self.streams.get_mut(&id) {
                s.recv_window += grow;
                s.reserved += grow as usize;
            }
        } else {
            grow = 0;
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv_credit += delta_base + grow;
        }
        self.queue_control(Header::new(
            FrameType::WindowUpdate,
            open_flag,
            id,
            delta_base + grow,
        ));
    }

    /// A new inbound stream `id` (its SYN just arrived with `extra_credit` beyond the
    /// initial window). False when it is refused: a reset is queued.
    pub(crate) fn accept_new(
        &mut self,
        config: &YamuxConfig,
        id: u32,
        extra_credit: u32,
    ) -> Result<bool, &'static str> {
        let refuse = |st: &mut State, why: &str| {
            tracing::debug!(stream = id, "refusing an inbound yamux stream: {why}");
            if st.refused_order.len() >= MAX_REMEMBERED_REFUSALS {
                if let Some(old) = st.refused_order.pop_front() {
                    st.refused.remove(&old);
                }
            }
            st.refused.insert(id);
            st.refused_order.push_back(id);
            st.queue_control(Header::new(FrameType::WindowUpdate, flags::RST, id, 0));
            Ok(false)
        };
        if self.refused.contains(&id) {
            return Err("a stream was opened again after it was refused");
        }
        if self.closing {
            return refuse(self, "the connection is closing");
        }
        if self.live >= config.max_streams {
            return refuse(self, "the stream limit is reached");
        }
        if self.inbound.len() >= config.inbound_backlog {
            tracing::warn!("yamux inbound backlog full; resetting inbound stream");
            return refuse(self, "the inbound backlog is full");
        }
        let credit = INITIAL_WINDOW
            .checked_add(extra_credit)
            .ok_or("window credit overflows")?;
        let window = match self.reserve_initial_window(config) {
            Ok(window) => window,
            Err(e) => return refuse(self, &format!("no memory for its window: {e}")),
        };
        self.streams
            .insert(id, StreamState::new(flags::ACK, credit, window));
        self.live += 1;
        self.inbound.push_back(id);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use strata_core::PeerId;

    fn hash(builder: &StreamIdHash, id: u32) -> u64 {
        builder.hash_one(id)
    }

    #[test]
    fn stream_ids_spread_over_buckets_and_tags() {
        // A dialer's IDs: odd and sequential, as a remote opening 4,096 streams sends them.
        let ids: Vec<u32> = (0..4096).map(|i| 2 * i + 1).collect();
        // Whatever the key: a weak key would show within a few tries.
        for _ in 0..32 {
            let builder = StreamIdHash::random();
            let buckets: HashSet<u64> = ids.iter().map(|&id| hash(&builder, id) & 4095).collect();
            let tags: HashSet<u64> = ids.iter().map(|&id| hash(&builder, id) >> 57).collect();
            // A uniform hash fills about 63% of 4,096 buckets with 4,096 keys (2,589, give
            // or take 25); all 128 tags.
            assert!(buckets.len() > 2400, "{} buckets used", buckets.len());
            assert_eq!(tags.len(), 128);
        }
    }

    /// A secured stream that takes `take` bytes, then pushes back.
    struct TakesFew {
        take: usize,
        got: Vec<u8>,
    }

    impl tokio::io::AsyncRead for TakesFew {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl tokio::io::AsyncWrite for TakesFew {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.take);
            if n == 0 {
                return Poll::Pending;
            }
            self.take -= n;
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A session over a secured stream that takes `take` bytes, then pushes back.
    fn session_taking(take: usize) -> Session {
        Session::new(
            PeerId::random(),
            YamuxConfig::default(),
            Direction::Outbound,
            Arc::new(ConnScope::unlimited()),
            Box::new(TakesFew {
                take,
                got: Vec::new(),
            }),
        )
    }

    /// A written frame's buffer is copied into again for the next frame; what spare
    /// buffers hold and what is queued stay within the queue limit together; an idle
    /// connection lets them go.
    #[test]
    fn written_frame_buffers_are_reused_within_the_queue_limit() {
        let session = session_taking(0);
        let limit = 100_000;
        let mut st = session.lock();
        let mut written = vec![BytesMut::with_capacity(40_000)];
        let kept_at = written[0].as_ptr();
        st.keep_spare_frames(&mut written, limit);
        assert!(written.is_empty());
        assert_eq!(st.spare_bytes, 40_000);
        st.queue_data(Header::new(FrameType::Data, 0, 1, 100), &[7; 100])
            .unwrap();
        assert_ne!(st.out.back().map(|f| f.as_ptr()), Some(kept_at));
        assert_eq!(
            st.spare_bytes, 40_000,
            "a small frame leaves the spare alone"
        );
        st.queue_data(Header::new(FrameType::Data, 0, 1, 30_000), &[7; 30_000])
            .unwrap();
        let frame = st.out.back().expect("queued");
        assert_eq!(frame.as_ptr(), kept_at, "the spare buffer is used again");
        assert_eq!(frame.len(), HEADER_LEN + 30_000);
        assert_eq!(st.spare_bytes, 0);

        // 30,124 queued: a 40,000-byte spare fits beside it, a second does not (and
        // neither would a third past MAX_SPARE_FRAMES).
        let mut written = vec![
            BytesMut::with_capacity(40_000),
            BytesMut::with_capacity(40_000),
        ];
        st.keep_spare_frames(&mut written, limit);
        assert_eq!(st.spare_frames.len(), 1);
        assert!(st.out_bytes + st.spare_bytes <= limit);
        st.drop_spare_frames();
        assert_eq!((st.spare_frames.len(), st.spare_bytes), (0, 0));
    }

    /// Writes one frame through a stream that takes `take` bytes; returns whether it was
    /// written through, and what then sits in the queue.
    fn write_through_taking(take: usize) -> (bool, Vec<u8>, usize) {
        let session = session_taking(take);
        let header = Header::new(FrameType::Data, 0, 1, 5);
        let mut cx = Context::from_waker(Waker::noop());
        let (through, st) = session.write_through(session.lock(), header, b"hello", &mut cx);
        assert!(!st.writing_through);
        let queued: Vec<u8> = st.out.iter().flat_map(|b| b.iter().copied()).collect();
        (through, queued, st.out_bytes)
    }

    #[test]
    fn a_frame_written_through_in_part_leaves_exactly_its_rest_first_in_line() {
        let frame = [
            &Header::new(FrameType::Data, 0, 1, 5).encode()[..],
            b"hello",
        ]
        .concat();
        // Nothing taken: not written through, the caller queues the whole frame.
        assert_eq!(write_through_taking(0), (false, Vec::new(), 0));
        // The header cut: its rest and the whole body wait.
        assert_eq!(
            write_through_taking(5),
            (true, frame[5..].to_vec(), frame.len() - 5)
        );
        // The body cut.
        assert_eq!(
            write_through_taking(14),
            (true, frame[14..].to_vec(), frame.len() - 14)
        );
        // All taken: nothing waits.
        assert_eq!(write_through_taking(100), (true, Vec::new(), 0));
    }

    #[test]
    fn a_receive_buffer_never_grows_past_its_reservation() {
        let mut s = StreamState::new(0, INITIAL_WINDOW, INITIAL_WINDOW);
        // Pieces that make BytesMut double its capacity past the window on its own.
        let mut total = 0;
        for piece in [1000usize, 70_000, 100_000, 91_144] {
            s.make_room(piece);
            s.recv.extend_from_slice(&vec![1u8; piece]);
            total += piece;
            assert!(
                s.recv.capacity() <= s.reserved,
                "{} > {}",
                s.recv.capacity(),
                s.reserved
            );
        }
        assert_eq!(total, INITIAL_WINDOW as usize);
        // Read half, then fill again: the room read is reclaimed, nothing grows.
        bytes::Buf::advance(&mut s.recv, 128 * 1024);
        s.make_room(128 * 1024);
        assert!(s.recv.capacity() <= s.reserved);
        // A shrunken window's reservation grows with what arrives, and the buffer with it.
        let mut small = StreamState::new(0, INITIAL_WINDOW, 16 * 1024);
        small.reserved = 40_000;
        small.make_room(40_000);
        assert!(small.recv.capacity() <= 40_000);
    }

    #[test]
    fn control_frames_gather_in_one_buffer_and_stay_in_order() {
        let session = session_taking(0);
        let mut st = session.lock();
        for id in [1, 3, 5] {
            st.queue_control(Header::new(FrameType::WindowUpdate, flags::RST, id, 0));
        }
        st.queue_data(Header::new(FrameType::Data, 0, 7, 2), b"hi")
            .unwrap();
        st.queue_control(Header::new(FrameType::WindowUpdate, flags::FIN, 7, 0));
        assert_eq!(st.control_queued, 4 * HEADER_LEN);
        assert!(st.may_read_more());
        let mut taken = VecDeque::new();
        st.take_queue(&mut taken);
        // Three resets in one buffer, the data frame, the FIN after it.
        assert_eq!(taken.len(), 3);
        assert_eq!(taken[0].len(), 3 * HEADER_LEN);
        let ids: Vec<u32> = taken
            .iter()
            .flat_map(|b| b.chunks(HEADER_LEN).take(3))
            .filter_map(|h| h.try_into().ok().and_then(|h| Header::decode(h).ok()))
            .map(|h| h.stream)
            .collect();
        assert_eq!(ids, [1, 3, 5, 7, 7]);
        assert_eq!(st.control_queued, 0);
        assert!(st.queue_is_empty());
        // Past the bound, reading what could make more answers stops.
        for i in 0..=(MAX_QUEUED_CONTROL / HEADER_LEN) as u32 {
            st.queue_control(Header::new(FrameType::WindowUpdate, flags::RST, i, 0));
        }
        assert!(!st.may_read_more());
    }

    #[test]
    fn each_connection_hashes_with_its_own_key() {
        let (a, b) = (StreamIdHash::random(), StreamIdHash::random());
        let same = (1..=64).filter(|&id| hash(&a, id) == hash(&b, id)).count();
        assert_eq!(same, 0, "two connections share a key");
    }
}
