//! Running commands and talking to ports: time limits, drained pipes, signals, plain HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn signal_pid(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

pub fn wait_for_port(addr: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(())
}

/// A minimal HTTP/1.0 GET: (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the HTTP port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A process a test runs beside itself, killed when dropped: a test that fails leaves nothing
/// running.
pub struct Background(Option<Child>);

impl Background {
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(Some(
            cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}")),
        ))
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a process not yet finished")
    }

    pub fn id(&mut self) -> u32 {
        self.child().id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child().try_wait().unwrap().is_none()
    }

    /// Waits up to `timeout` for the process to end (killed past it, and the test fails);
    /// what it wrote to piped outputs.
    pub fn finish(mut self, what: &str, timeout: Duration) -> Output {
        finish(self.0.take().unwrap(), what, timeout)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion with a time limit, returning its output. Output is drained
/// while it runs, so a chatty command cannot block on a full pipe.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    finish(child, &format!("{cmd:?}"), timeout)
}

fn finish(child: Child, what: &str, timeout: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            signal_pid(pid, "KILL");
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "{what} ran past {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Runs a command that must succeed; returns stdout.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> String {
    let out = run(cmd, timeout);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Feeds `input` to a command's stdin; returns its output.
pub fn run_with_input(cmd: &mut Command, input: &[u8], timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = finish(child, &format!("{cmd:?}"), timeout);
    let _ = writer.join();
    out
}

/// util-linux `logger` to 127.0.0.1:`port` with `args`.
pub fn logger(port: &str, args: &[&str]) {
    run_ok(
        Command::new("logger")
            .args(["-n", "127.0.0.1", "-P", port])
            .args(args),
        Duration::from_secs(10),
    );
}
