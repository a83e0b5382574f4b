//! What the machine allows this process: its descriptor limit and its memory. Defaults
//! that scale with the machine (the accept bound, the resource manager's limits) read
//! them here.

/// The soft limit on open file descriptors (`RLIMIT_NOFILE`), or 1024 when it cannot be
/// read or is unlimited.
pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return 1024;
    }
    // rlim_t is u64 on Linux but not on every platform.
    #[allow(clippy::unnecessary_cast)]
    let soft = lim.rlim_cur as u64;
    soft
}

/// Raises the soft descriptor limit to the hard one (what a busy listener, or a test
/// holding thousands of sockets, wants) and returns the soft limit then in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct we pass, which lives
    // for the call.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    fd_limit()
}

/// The resident set of process `pid` (this process with `None`) in KiB, from `/proc`;
/// 0 where it cannot be read.
pub fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user and system) this process has used so far.
pub fn cpu_time() -> std::time::Duration {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage only writes the struct we pass, which lives for the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return std::time::Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Bytes received so far over the TCP sockets this process has open (the kernel's
/// `tcpi_bytes_received` of each, summed): with both ends of every connection in the
/// process, what all of them sent, framing and encryption included. For benchmarks
/// that compare stacks on the wire.
pub fn tcp_bytes_received() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut total = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        // SAFETY: an all-zero tcp_info is a valid value of this plain C struct.
        let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that
        // large and lives for the call; on a descriptor that is not a TCP socket (or no
        // longer open) it fails without writing, and the result is ignored.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut info as *mut libc::tcp_info).cast(),
                &mut len,
            )
        };
        if rc == 0 {
            total += info.tcpi_bytes_received;
        }
    }
    total
}

/// The machine's physical memory in bytes, or 1 GiB when it cannot be read.
pub fn total_memory() -> u64 {
    // SAFETY: sysconf takes no pointers; it returns -1 on error, handled below.
    let (pages, page) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if pages <= 0 || page <= 0 {
        return 1 << 30;
    }
    (pages as u64).saturating_mul(page as u64)
}

/// A global allocator that forwards every call to the system allocator and counts what
/// the process holds: live heap bytes, their peak, and the largest single allocation.
/// For tests and benchmarks that measure real memory against what the resource manager
/// books; install it in the test or bench binary with
/// `#[global_allocator] static A: CountingAllocator = CountingAllocator;`.
pub struct CountingAllocator;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);
static PEAK: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);
static LARGEST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl CountingAllocator {
    /// Heap bytes allocated and not yet freed (by a binary that installed it).
    pub fn live() -> isize {
        LIVE.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The most [`CountingAllocator::live`] has been since the last reset.
    pub fn peak() -> isize {
        PEAK.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Starts a new peak from what is live now.
    pub fn reset_peak() {
        PEAK.store(Self::live(), std::sync::atomic::Ordering::SeqCst);
    }

    /// The largest single allocation (or reallocation) asked for.
    pub fn largest() -> usize {
        LARGEST.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn grew(by: isize, size: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = LIVE.fetch_add(by, Relaxed) + by;
        PEAK.fetch_max(now, Relaxed);
        LARGEST.fetch_max(size, Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged, with the caller's arguments, to the system
// allocator, which upholds GlobalAlloc's contract; the counting beside it only updates
// atomics, which neither allocate nor touch the memory handed out.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds alloc's contract.
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size() as isize, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, that is, from the
        // system allocator with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds realloc's contract.
        let p = unsafe { std::alloc::System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            Self::grew(new_size as isize - layout.size() as isize, new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_read() {
        assert!(fd_limit() >= 16);
        assert!(total_memory() >= 64 << 20);
        assert!(raise_fd_limit() >= fd_limit().min(16));
        assert!(rss_kib(None) > 0);
        assert_eq!(rss_kib(Some(u32::MAX)), 0);
    }
}
