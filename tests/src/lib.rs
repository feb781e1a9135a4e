//! Fixtures for process-level tests: start the real `ferry` binary on a free loopback port,
//! talk to it over a socket, stop it with a signal. Processes are killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running `ferry serve`.
pub struct FerryProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// A plain HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl FerryProcess {
    /// Starts `bin serve --listen 127.0.0.1:<free port> <args>` with `envs`, and waits until
    /// it answers `/v2/health/live`.
    pub fn start(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<FerryProcess, String> {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = std::env::temp_dir().join(format!("ferry-e2e-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", bin.display()))?;
        let mut process = FerryProcess {
            child: Some(child),
            addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = process
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .map_err(|e| e.to_string())?
            {
                return Err(format!(
                    "ferry exited with {status} before answering:\n{}",
                    process.logs()
                ));
            }
            if process
                .request("GET", "/v2/health/live", "")
                .is_ok_and(|r| r.status == 200)
            {
                return Ok(process);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "ferry did not answer within 60 s:\n{}",
                    process.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls `/v2/health/ready` until 200 or `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self
                .request("GET", "/v2/health/ready", "")
                .is_ok_and(|r| r.status == 200)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// One HTTP/1.1 request on a fresh connection.
    pub fn request(&self, method: &str, path: &str, body: &str) -> std::io::Result<HttpResponse> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Ok(HttpResponse {
            status,
            headers,
            body: body.to_string(),
        })
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the process is running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        child.wait().expect("waiting for ferry")
    }
}

impl Drop for FerryProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `bin` with `args` to completion, returning (exit status, stderr).
pub fn run(bin: &Path, args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the binary runs");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned()
            + String::from_utf8_lossy(&out.stdout).as_ref(),
    )
}

/// A real S3 endpoint on loopback: moto's standalone server (`pip install 'moto[server]'`,
/// see scripts/setup-test-deps.sh) as a child process, killed when dropped. Set
/// `FERRY_TEST_S3_ENDPOINT` to use an already running endpoint instead.
pub struct MotoServer {
    child: Option<Child>,
    pub endpoint: String,
    pub log: PathBuf,
}

impl MotoServer {
    /// Starts moto on a free port and waits until it answers. Fails (never skips) when it
    /// cannot start.
    pub fn start() -> Result<MotoServer, String> {
        if let Ok(endpoint) = std::env::var("FERRY_TEST_S3_ENDPOINT") {
            return Ok(MotoServer {
                child: None,
                endpoint,
                log: PathBuf::new(),
            });
        }
        let port = free_port();
        let log = std::env::temp_dir().join(format!("ferry-e2e-moto-{port}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let child = Command::new(&python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| {
                format!("could not start `{python} -m moto.server` (run scripts/setup-test-deps.sh): {e}")
            })?;
        let mut server = MotoServer {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = server.child.as_mut().unwrap().try_wait().ok().flatten() {
                return Err(format!(
                    "moto exited with {status} before answering:\n{}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                ));
            }
            if raw_http(addr, "GET", "/", "").is_ok_and(|(status, _)| status == 200) {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!("moto did not answer on {addr} within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn addr(&self) -> SocketAddr {
        let hostport = self.endpoint.trim_start_matches("http://");
        hostport.parse().expect("a loopback endpoint")
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        match raw_http(self.addr(), "PUT", &format!("/{bucket}"), "") {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("create bucket {bucket}: {status} {body}")),
            Err(e) => Err(format!("create bucket {bucket}: {e}")),
        }
    }

    /// Overwrites an object with `body` (for corrupting uploads in tests).
    pub fn put_object(&self, bucket: &str, key: &str, body: &str) -> Result<(), String> {
        match raw_http(self.addr(), "PUT", &format!("/{bucket}/{key}"), body) {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("put {bucket}/{key}: {status} {body}")),
            Err(e) => Err(format!("put {bucket}/{key}: {e}")),
        }
    }

    /// The environment the AWS SDK (and the `ferry` binary) needs to reach this endpoint.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// Kills the server (an S3 outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
