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

/// A `fhirgate serve` child on a free loopback port, its stderr kept for [`Serve::stop`].
pub struct Serve {
    pub child: Child,
    /// `http://127.0.0.1:PORT`, also its `--base-url`.
    pub base: String,
}

impl Serve {
    /// Start `fhirgate serve` in `dir` with `args` (after `--listen` and `--base-url`) and
    /// `env`, and wait until it listens; panics with its stderr if it does not.
    pub fn start(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        use std::io::Read;
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .current_dir(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--base-url", &base])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn fhirgate serve");
        if let Err(why) = wait_listening(port, &mut child, Duration::from_secs(30)) {
            let mut log = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut log);
            }
            panic!("{why}: {log}");
        }
        Serve { child, base }
    }

    /// Send `signal` (`-HUP`, `-TERM`, …).
    pub fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill {signal}");
    }

    /// SIGTERM; asserts a clean exit and returns what it wrote on stderr.
    pub fn stop(mut self) -> String {
        use std::io::Read;
        self.signal("-TERM");
        let status = self.child.wait().expect("wait for fhirgate");
        let mut log = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut log);
        }
        assert!(status.success(), "{status:?}: {log}");
        log
    }
}
