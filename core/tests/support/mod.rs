//! Real redis-server processes for the Redis tests: started on free loopback ports in a temp dir
//! (`--save '' --appendonly no`), stopped (and the dir removed) on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ratewall_core::config::{ClockSource, RedisSettings};

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ratewall-{tag}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bindable(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A free loopback port (and, with `bus`, `port + 10000` free too, for the cluster bus).
pub fn free_port(bus: bool) -> u16 {
    for _ in 0..1000 {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if bus && (p > 55_000 || !bindable(p + 10_000)) {
            continue;
        }
        return p;
    }
    panic!("no free port");
}

/// Settings for a store on `url` with `timeout_ms` and the client clock (tests pass `now`).
pub fn settings(url: &str, timeout_ms: u64) -> RedisSettings {
    RedisSettings {
        url: url.to_string(),
        cluster: false,
        ca_certs: None,
        certfile: None,
        keyfile: None,
        check_hostname: true,
        timeout_ms,
        clock: ClockSource::Client,
        negative_cache_keys: 0,
    }
}

/// One redis-server process.
pub struct RedisServer {
    pub port: u16,
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// TLS port servers are probed by TCP only.
    tls: bool,
}

impl RedisServer {
    /// A plain server on a free port.
    pub fn start() -> Self {
        Self::start_with(free_port(false), &[], false)
    }

    /// A server on `port` with extra arguments.
    pub fn start_with(port: u16, extra: &[&str], tls: bool) -> Self {
        let dir = temp_dir("redis");
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.display().to_string(),
            "--protected-mode".into(),
            "no".into(),
        ];
        if tls {
            args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
            ]);
        } else {
            args.extend(["--port".into(), port.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Self {
            port,
            dir,
            args,
            child: None,
            tls,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.tls {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    std::thread::sleep(Duration::from_millis(50));
                    return;
                }
            } else if let Ok(mut c) = self.sync_conn() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn sync_conn(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Run a command on a fresh sync connection.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut c = self.sync_conn().unwrap();
        cmd.query(&mut c).unwrap()
    }

    /// `calls` of `cmdstat_<name>` in INFO commandstats (0 if never called).
    pub fn command_calls(&self, name: &str) -> u64 {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats"));
        command_calls(&info, name)
    }

    /// Every key matching `pattern`, with its PTTL.
    pub fn keys_with_ttl(&self, pattern: &str) -> Vec<(String, i64)> {
        let mut c = self.sync_conn().unwrap();
        let keys: Vec<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter::<String>(&mut c)
            .unwrap()
            .map(|k| k.unwrap())
            .collect();
        let mut c = self.sync_conn().unwrap();
        keys.into_iter()
            .map(|k| {
                let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
                (k, ttl)
            })
            .collect()
    }

    /// Assert SCAN finds no key matching `pattern` without a TTL.
    pub fn assert_every_key_has_ttl(&self, pattern: &str) {
        for (k, ttl) in self.keys_with_ttl(pattern) {
            // -1 is "no TTL" (the defect); 0 is a key in its last millisecond, -2 one that expired
            // between SCAN and PTTL.
            assert!(ttl != -1, "key {k} has no TTL (PTTL {ttl})");
        }
    }

    /// SIGKILL the server (the port is kept for [`RedisServer::restart`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and arguments (empty: no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !bindable(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.spawn();
    }

    /// SIGSTOP / SIGCONT.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A stopped process must be continued to die cleanly.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Parse `calls=` of `cmdstat_<name>` from INFO commandstats text.
pub fn command_calls(info: &str, name: &str) -> u64 {
    let prefix = format!("cmdstat_{}:", name.to_ascii_lowercase());
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A local 3-master Redis Cluster (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                let port = free_port(true);
                RedisServer::start_with(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "5000",
                    ],
                    false,
                )
            })
            .collect();
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = cmd
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = nodes.iter().all(|n| {
                let info: String = n.query(redis::cmd("CLUSTER").arg("INFO"));
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { nodes }
    }

    /// Comma-separated seed URLs.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn settings(&self, timeout_ms: u64) -> RedisSettings {
        let mut s = settings(&self.url(), timeout_ms);
        s.cluster = true;
        s
    }

    /// Sum of `calls` of `cmdstat_<name>` over every node.
    pub fn command_calls(&self, name: &str) -> u64 {
        self.nodes.iter().map(|n| n.command_calls(name)).sum()
    }

    pub fn assert_every_key_has_ttl(&self, pattern: &str) {
        for n in &self.nodes {
            n.assert_every_key_has_ttl(pattern);
        }
    }
}

/// Certificates generated for one TLS test (PEM files in `dir`).
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// A CA, a server certificate for `localhost` only (not 127.0.0.1, to exercise hostname
    /// checks) and a client certificate.
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = temp_dir("pki");
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ratewall test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key_pem) = leaf(vec!["localhost".into()], "localhost");
        let (client_pem, client_key_pem) = leaf(vec!["ratewall-client".into()], "ratewall-client");
        let write = |name: &str, text: &str| -> PathBuf {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Self {
            ca: write("ca.pem", &ca.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server.key", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client.key", &client_key_pem),
            dir,
        }
    }

    /// A TLS-only redis-server; `auth_clients` requires client certificates (mTLS).
    pub fn server(&self, auth_clients: bool) -> RedisServer {
        let p = |x: &Path| x.display().to_string();
        let (cert, key, ca) = (p(&self.server_cert), p(&self.server_key), p(&self.ca));
        RedisServer::start_with(
            free_port(false),
            &[
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
            ],
            true,
        )
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
