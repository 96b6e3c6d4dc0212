//! Envoy processes: the binary's version, one sidecar process per pod, and its admin
//! endpoint. Processes are started with `kill_on_drop`, so a run that ends (or fails)
//! takes its Envoys with it.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often Envoy flushes its access and outlier logs (its default is 10 s).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// How one Envoy sidecar is started.
#[derive(Clone, Debug)]
pub struct Launch {
    pub binary: PathBuf,
    pub bootstrap: PathBuf,
    /// Worker threads (Istio's sidecar default: 2).
    pub concurrency: u32,
    /// Envoy's own log (warnings and errors).
    pub log: PathBuf,
}

/// The version line's release, e.g. `1.40.0`, from `envoy --version`.
pub fn version(binary: &Path) -> Result<String, String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: cannot run it: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `envoy  version: <sha>/<release>/<status>/<build type>/<ssl>`
    text.split("version:")
        .nth(1)
        .and_then(|v| v.trim().split('/').nth(1))
        .map(str::to_string)
        .ok_or_else(|| format!("{}: not an Envoy binary (--version printed {:?})", binary.display(), text.trim()))
}

/// Starts one Envoy. It is killed when its handle is dropped, and (on Linux) when the
/// thread that started it ends — so a meshsim killed by a signal takes its Envoys along.
pub fn spawn(l: &Launch) -> io::Result<tokio::process::Child> {
    let mut command = tokio::process::Command::new(&l.binary);
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the child between fork and exec and only calls
    // prctl(2), which is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .arg("-c")
        .arg(&l.bootstrap)
        .args(["--disable-hot-restart", "--concurrency"])
        .arg(l.concurrency.to_string())
        .args(["-l", "warning", "--log-path"])
        .arg(&l.log)
        .args(["--file-flush-interval-msec", &FLUSH_INTERVAL.as_millis().to_string()])
        .args(["--drain-time-s", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// `GET path` on an Envoy's admin listener: the status and body.
#[allow(clippy::disallowed_types, clippy::disallowed_methods)] // the admin endpoint of a process outside the seam
pub async fn admin_get(admin: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("admin {admin}{path}: not an HTTP response")))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Chunked bodies (config dumps) are not de-chunked here: callers read small
    // bodies (`/ready`) or use `?format=json` endpoints whose chunking they strip.
    Ok((status, body.to_string()))
}
