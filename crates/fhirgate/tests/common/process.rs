//! `fhirgate` child processes: a free loopback port, and waiting until the child listens on it.

use std::net::{TcpListener, TcpStream};
use std::process::Child;
use std::time::{Duration, Instant};

/// A loopback port that nothing listens on now, for a child `fhirgate serve --listen`.
///
/// Not the OS's pick (`bind(":0")`): that comes from the ephemeral range, where every
/// `bind(":0")` and outgoing connection of the tests running alongside draws too, so a port
/// released here could be taken again before the child binds it, and the test would then talk
/// to someone else's listener. These ports come from below the ephemeral range (Linux's starts at
/// 32768), each handed out once per test process, from an offset that differs between processes.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7_919) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// Wait until `child` accepts connections on `port`. `Err` says why not: the child exited
/// (with its status) or `timeout` passed.
///
/// A successful `connect` alone does not prove it: the port is in the ephemeral range, and a
/// connect to it while nothing listens can be answered by the connecting socket itself (TCP
/// simultaneous open, the kernel having picked that same port as the local one). Such a
/// self-connection is told apart by its local address equalling its peer's.
pub fn wait_listening(port: u16, child: &mut Child, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            let own = stream.local_addr().ok() == stream.peer_addr().ok();
            if !own {
                return Ok(());
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "fhirgate exited with {status} before listening on {port}"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "fhirgate did not listen on {port} within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
