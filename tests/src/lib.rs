//! Workspace integration tests for Hearth: several processes on loopback driving the
//! real binaries. The tests live in `tests/tests/`; this library holds what they share.

#![deny(missing_docs)]

pub mod api;
pub mod nat_mesh;
pub mod netns;
pub mod restart;

/// A small seeded generator (xorshift64*), so that randomized tests replay exactly from
/// the seed they print.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (zero is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `low..high` (`high > low`).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low).max(1)
    }
}

/// Driving the real `hearth` binary: run commands, start and stop nodes.
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
pub mod cli {
    use std::io::{BufRead as _, BufReader, Read as _};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Output, Stdio};

    use serde_json::Value;

    pub fn hearth_bin() -> PathBuf {
        // The `hearth` binary sits next to this test's binary's parent directory.
        let mut path = std::env::current_exe().unwrap();
        path.pop();
        if path.ends_with("deps") {
            path.pop();
        }
        let bin = path.join("hearth");
        assert!(
            bin.exists(),
            "{} is missing: build it with `cargo build -p hearth-cli --features sled` (the \
             crash test runs it on sled too)",
            bin.display()
        );
        bin
    }

    pub fn hearth(dir: &Path, args: &[&str]) -> Output {
        Command::new(hearth_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn json_ok(dir: &Path, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = hearth(dir, &all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!("{args:?}: {err}: {}", String::from_utf8_lossy(&out.stdout))
        })
    }

    #[derive(Debug)]
    pub struct RunningNode {
        /// The node process.
        pub child: Child,
        /// Its API address.
        pub addr: String,
    }

    /// Starts `hearth node run` and waits for the line that says it listens. The caller
    /// owns the child and waits for it in `stop`.
    #[allow(clippy::zombie_processes)]
    pub fn start(dir: &Path) -> RunningNode {
        start_with(
            dir,
            &["--no-mdns", "--listen", "/ip4/127.0.0.1/udp/0/quic-v1"],
        )
    }

    /// Reads a starting node's stderr until it says where its API listens, returns that
    /// address, and keeps draining stderr so the node never blocks on a full pipe.
    pub fn await_listening(child: &mut Child) -> String {
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the node exited before listening"
            );
            if let Some(rest) = line.split("local API on ").nth(1) {
                let addr = rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('.')
                    .to_owned();
                // With HEARTH_TEST_LOGS=DIR, each node's log is kept in DIR/PID.log.
                let keep = std::env::var_os("HEARTH_TEST_LOGS")
                    .map(|dir| Path::new(&dir).join(format!("{}.log", child.id())));
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    let _ = stderr.read_to_string(&mut sink);
                    if let Some(path) = keep {
                        let _ = std::fs::write(path, sink);
                    }
                });
                return addr;
            }
        }
    }

    /// Starts `hearth node run` with extra arguments (an API on 127.0.0.1, port chosen by
    /// the system) and waits for the line that says it listens.
    #[allow(clippy::zombie_processes)]
    pub fn start_with(dir: &Path, extra: &[&str]) -> RunningNode {
        let mut child = Command::new(hearth_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["node", "run", "--api", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = await_listening(&mut child);
        RunningNode { child, addr }
    }

    pub fn stop(mut node: RunningNode) {
        let status = Command::new("kill")
            .args(["-TERM", &node.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = node.child.wait().unwrap();
        assert!(exit.success(), "the node did not stop cleanly: {exit}");
    }

    /// A node still running when its handle goes (a test that failed half-way) is
    /// killed, so that it does not outlive the test.
    impl Drop for RunningNode {
        fn drop(&mut self) {
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }

    /// Mesh listeners on loopback only (QUIC and TCP, ports chosen by the system),
    /// without mDNS: what the multi-process tests run nodes with.
    pub const LOOPBACK_MESH: [&str; 5] = [
        "--no-mdns",
        "--listen",
        "/ip4/127.0.0.1/udp/0/quic-v1",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
    ];

    /// Starts a node that meshes over loopback only.
    pub fn start_meshed(dir: &Path) -> RunningNode {
        start_with(dir, &LOOPBACK_MESH)
    }

    /// Polls `f` every 100 ms until it returns something; fails the test with `what`
    /// after `secs` seconds.
    pub fn wait_until<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(value) = f() {
                return value;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting: {what}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Polls `done` every half millisecond until it holds (for benchmarks, which time
    /// what they wait for); panics with `what` after `secs` seconds.
    pub fn wait_closely(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting: {what}"
            );
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    }

    pub fn init(dir: &Path) {
        let out = hearth(dir, &["init", "--name", "home"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Three devices of one mesh in `root`: home (which holds the owner key), the
    /// phone and the cloud VM (named `vm`), each running.
    #[derive(Debug)]
    pub struct Three {
        /// Home's data directory.
        pub home: PathBuf,
        /// The phone's.
        pub phone: PathBuf,
        /// The VM's.
        pub cloud: PathBuf,
        /// The running nodes, in that order.
        pub nodes: [RunningNode; 3],
    }

    /// Makes home, joins the phone and the VM to it, and starts all three.
    pub fn three_devices(root: &Path) -> Three {
        let (home, phone, cloud) = (root.join("home"), root.join("phone"), root.join("cloud"));
        init(&home);
        let home_node = start_meshed(&home);
        join_all(
            &home,
            &[(&phone, "phone", "mobile"), (&cloud, "vm", "cloud")],
        );
        let phone_node = start_meshed(&phone);
        let cloud_node = start_meshed(&cloud);
        Three {
            home,
            phone,
            cloud,
            nodes: [home_node, phone_node, cloud_node],
        }
    }

    /// `hearth init --recover --name NAME --role home` in `dir`, with `phrase` on stdin.
    pub fn recover(dir: &Path, name: &str, phrase: &str) {
        use std::io::Write as _;
        let mut child = Command::new(hearth_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["init", "--recover", "--name", name, "--role", "home"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{phrase}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every file under `dir` whose bytes contain `needle`.
    pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).unwrap().flatten() {
                    stack.push(entry.path());
                }
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(path);
            }
        }
        hits
    }

    /// Joins each `(data dir, name, role)` to the mesh of `home`'s running node, with a
    /// ticket `home` issues for it.
    pub fn join_all(home: &Path, devices: &[(&Path, &str, &str)]) {
        for (dir, name, role) in devices {
            let ticket = json_ok(home, &["invite"])["ticket"]
                .as_str()
                .unwrap()
                .to_owned();
            json_ok(dir, &["join", &ticket, "--name", name, "--role", role]);
        }
    }
}

/// The guest side: the example computations, built for `wasm32-wasip2`.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]
pub mod guest {
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::OnceLock;

    /// The built module `name` (`daily_mean`, `places`, …). The first call in a
    /// process builds the guest workspace (`examples/compute`) once, into
    /// `target/guest` next to the test binaries; cargo's lock keeps concurrent test
    /// processes from building it twice.
    pub fn module(name: &str) -> PathBuf {
        static BUILT: OnceLock<PathBuf> = OnceLock::new();
        let dir = BUILT.get_or_init(|| {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            // TARGET/debug/hearth → TARGET
            let bin = crate::cli::hearth_bin();
            let target = bin
                .parent()
                .and_then(|p| p.parent())
                .expect("the binary sits in TARGET/PROFILE")
                .to_path_buf();
            let target = target.join("guest");
            let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .current_dir(&root)
                .args([
                    "build",
                    "--release",
                    "--locked",
                    "--target",
                    "wasm32-wasip2",
                    "--manifest-path",
                    "examples/compute/Cargo.toml",
                    "--target-dir",
                ])
                .arg(&target)
                .output()
                .expect("cargo runs");
            assert!(
                out.status.success(),
                "building the example computations failed (is the wasm32-wasip2 target \
                 installed? scripts/setup.sh adds it):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            target.join("wasm32-wasip2").join("release")
        });
        let path = dir.join(format!("{name}.wasm"));
        assert!(path.exists(), "{} was not built", path.display());
        path
    }
}

/// Computations as a developer runs them: a manifest approved by the owner, `hearth
/// run` with the developer's key.
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
pub mod work {
    use std::io::Write as _;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};

    use serde_json::Value;

    use crate::cli::{hearth, hearth_bin, json_ok};
    use crate::guest::module;

    /// Appends JSON lines to `store` through the CLI.
    pub fn append(dir: &Path, store: &str, lines: &[String]) {
        let mut child = Command::new(hearth_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["store", "append", store, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.join("\n").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A manifest (from examples/manifests, optionally changed) and its module copied into
    /// `dir`, approved on `owner` for the holder key in `dir/dev.key`; returns the cap file.
    pub fn approve(
        owner: &Path,
        dir: &Path,
        manifest: &str,
        module_name: &str,
        tweak: &str,
    ) -> PathBuf {
        let wasm = dir.join(format!("{module_name}.wasm"));
        if !wasm.exists() {
            std::fs::copy(module(module_name), &wasm).unwrap();
        }
        let key = dir.join("dev.key");
        let public_file = dir.join("dev.pub");
        if !key.exists() {
            let made = json_ok(owner, &["key", "new", "--out", key.to_str().unwrap()]);
            std::fs::write(&public_file, made["public_key"].as_str().unwrap()).unwrap();
        }
        let public = std::fs::read_to_string(&public_file).unwrap();
        let text = if manifest.contains('\n') {
            manifest.to_owned()
        } else {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests");
            std::fs::read_to_string(root.join(format!("{manifest}.toml"))).unwrap()
        };
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_owned();
        let path = dir.join(format!(
            "{name}{}.toml",
            if tweak.is_empty() { "" } else { "-tweaked" }
        ));
        std::fs::write(&path, format!("{text}{tweak}")).unwrap();
        let cap = dir.join(format!(
            "{name}{}.cap",
            if tweak.is_empty() { "" } else { "-tweaked" }
        ));
        let out = hearth(
            owner,
            &[
                "app",
                "approve",
                path.to_str().unwrap(),
                "--holder",
                &public,
                "--out",
                cap.to_str().unwrap(),
                "--yes",
            ],
        );
        assert!(
            out.status.success(),
            "approve {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cap
    }

    /// `hearth run` on `dir`'s node.
    pub fn run(
        dir: &Path,
        work: &Path,
        module_name: &str,
        cap: &Path,
        params: &str,
        extra: &[&str],
    ) -> Output {
        let wasm = work.join(format!("{module_name}.wasm"));
        if !wasm.exists() {
            std::fs::copy(module(module_name), &wasm).unwrap();
        }
        let key = work.join("dev.key");
        let mut args = vec![
            "--json",
            "run",
            wasm.to_str().unwrap(),
            "--cap",
            cap.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--params",
            params,
        ];
        args.extend_from_slice(extra);
        hearth(dir, &args)
    }

    pub fn run_ok(dir: &Path, work: &Path, module_name: &str, cap: &Path, params: &str) -> Value {
        let out = run(dir, work, module_name, cap, params, &[]);
        assert!(
            out.status.success(),
            "run {module_name} {params}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs and expects exit code `code`; returns the error line.
    pub fn run_fails(
        dir: &Path,
        work: &Path,
        module_name: &str,
        cap: &Path,
        params: &str,
        code: i32,
    ) -> String {
        let out = run(dir, work, module_name, cap, params, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "run {module_name} {params}: {stderr}"
        );
        stderr
    }
}

/// The dashboard as a browser reaches it, over plain HTTP/1.1 on a `TcpStream`, so
/// that a test controls every header (`Host`, `Origin`, `Cookie`).
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
pub mod dashboard {
    use std::io::{Read as _, Write as _};
    use std::path::Path;

    /// An answer: status, headers (names in lower case) and body.
    #[derive(Debug)]
    pub struct Answer {
        pub status: u16,
        pub headers: Vec<(String, String)>,
        pub body: String,
    }

    impl Answer {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// One request to `addr` with exactly these headers (and `Host: host`).
    pub fn raw(
        addr: &str,
        method: &str,
        path: &str,
        host: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(request.as_bytes()).unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.lines();
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// A logged-in browser session.
    #[derive(Debug)]
    pub struct Session {
        pub addr: String,
        pub cookie: String,
        /// The dashboard's secret path, `/ui/<secret>`.
        pub base: String,
    }

    /// `hearth dashboard` on `dir`, and the login link opened.
    pub fn login(dir: &Path) -> Session {
        let link = crate::cli::json_ok(dir, &["dashboard"]);
        let url = link["url"].as_str().unwrap();
        let rest = url.strip_prefix("http://").unwrap();
        let (addr, path) = rest.split_once('/').unwrap();
        let base = format!("/{}", path.split_once("/login").unwrap().0);
        let answer = raw(addr, "GET", &format!("/{path}"), addr, &[], "");
        assert_eq!(answer.status, 303, "{answer:?}");
        let cookie = answer
            .header("set-cookie")
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        Session {
            addr: addr.to_owned(),
            cookie,
            base,
        }
    }

    impl Session {
        /// `GET` of a page, named by its path under the secret prefix (`devices`).
        pub fn get(&self, page: &str) -> Answer {
            raw(
                &self.addr,
                "GET",
                &format!("{}/{page}", self.base),
                &self.addr,
                &[("Cookie", &self.cookie)],
                "",
            )
        }

        /// Posts a form to `page` with the CSRF token of the page `from`.
        pub fn post(&self, from: &str, page: &str, fields: &[(&str, &str)]) -> Answer {
            let token = csrf(&self.get(from).body);
            let mut form = format!("csrf={token}");
            for (name, value) in fields {
                let value: String = value
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            char::from(b).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                form.push_str(&format!("&{name}={value}"));
            }
            raw(
                &self.addr,
                "POST",
                &format!("{}/{page}", self.base),
                &self.addr,
                &[
                    ("Cookie", &self.cookie),
                    ("Content-Type", "application/x-www-form-urlencoded"),
                ],
                &form,
            )
        }
    }

    /// The CSRF token a page's forms carry.
    pub fn csrf(page: &str) -> String {
        let at = page
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token");
        let rest = &page[at + "name=\"csrf\" value=\"".len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

/// A real headless Chromium driven over WebDriver (`chromedriver`, from Debian's
/// `chromium-driver`), for the dashboard's browser tests.
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]
pub mod webdriver {
    use std::io::{BufRead as _, BufReader};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    use serde_json::{Value, json};

    /// The key WebDriver names an element by.
    const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

    #[derive(Debug)]
    pub struct Browser {
        driver: Child,
        base: String,
        agent: ureq::Agent,
    }

    impl Browser {
        /// Starts chromedriver (port chosen by the system) and a headless Chromium session.
        pub fn start() -> Browser {
            let mut driver = Command::new("chromedriver")
                .arg("--port=0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect(
                    "chromedriver runs (Debian's chromium-driver; scripts/setup.sh installs it)",
                );
            let mut out = BufReader::new(driver.stdout.take().unwrap());
            let mut line = String::new();
            let port = loop {
                line.clear();
                assert!(
                    out.read_line(&mut line).unwrap() > 0,
                    "chromedriver stopped"
                );
                if let Some(rest) = line.split("started successfully on port ").nth(1) {
                    break rest.trim().trim_end_matches('.').to_owned();
                }
            };
            std::thread::spawn(move || {
                let mut sink = String::new();
                while out.read_line(&mut sink).unwrap_or(0) > 0 {
                    sink.clear();
                }
            });
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut browser = Browser {
                driver,
                base: format!("http://127.0.0.1:{port}"),
                agent,
            };
            let session = browser.call(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1200,1000"]
                    }
                }}})),
            );
            let id = session["sessionId"].as_str().expect("a session").to_owned();
            browser.base = format!("{}/session/{id}", browser.base);
            browser
        }

        fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
            let url = format!("{}{path}", self.base);
            let response = match (method, body) {
                ("GET", _) => self.agent.get(&url).call(),
                ("DELETE", _) => self.agent.delete(&url).call(),
                (_, body) => self
                    .agent
                    .post(&url)
                    .content_type("application/json")
                    .send(body.unwrap_or_else(|| json!({})).to_string().as_bytes()),
            }
            .unwrap();
            let text = response.into_body().read_to_string().unwrap();
            let value: Value = serde_json::from_str(&text).unwrap();
            let value = value["value"].clone();
            if let Some(error) = value.get("error") {
                panic!("webdriver {method} {path}: {error}: {}", value["message"]);
            }
            value
        }

        pub fn goto(&self, url: &str) {
            self.call("POST", "/url", Some(json!({ "url": url })));
        }

        pub fn url(&self) -> String {
            self.call("GET", "/url", None).as_str().unwrap().to_owned()
        }

        pub fn source(&self) -> String {
            self.call("GET", "/source", None)
                .as_str()
                .unwrap()
                .to_owned()
        }

        /// The elements matching a CSS selector.
        pub fn all(&self, css: &str) -> Vec<String> {
            self.call(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e[ELEMENT]
                    .as_str()
                    .unwrap_or_else(|| panic!("an element reference: {e}"))
                    .to_owned()
            })
            .collect()
        }

        fn one(&self, css: &str) -> String {
            let found = self.all(css);
            assert!(
                !found.is_empty(),
                "no element matches {css}: {}",
                self.source()
            );
            found[0].clone()
        }

        pub fn text(&self, css: &str) -> String {
            let id = self.one(css);
            self.call("GET", &format!("/element/{id}/text"), None)
                .as_str()
                .unwrap()
                .to_owned()
        }

        pub fn click(&self, css: &str) {
            let id = self.one(css);
            self.call("POST", &format!("/element/{id}/click"), None);
        }

        /// Clicks what submits a form or follows a link, and waits until the page
        /// that comes of it holds `expect` (a CSS selector): a click does not wait for
        /// the navigation it starts.
        pub fn click_to(&self, css: &str, expect: &str) {
            self.click(css);
            self.wait_for(expect);
        }

        /// Waits (up to 30 s) until an element matches `css`.
        pub fn wait_for(&self, css: &str) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while self.all(css).is_empty() {
                if std::time::Instant::now() > deadline {
                    let source = self.source();
                    let main = source
                        .find("<main>")
                        .map_or(&source[..], |at| &source[at..]);
                    panic!("no element matches {css} at {}: {main}", self.url());
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }

        pub fn type_into(&self, css: &str, text: &str) {
            let id = self.one(css);
            self.call("POST", &format!("/element/{id}/clear"), None);
            self.call(
                "POST",
                &format!("/element/{id}/value"),
                Some(json!({ "text": text })),
            );
        }

        /// Runs a script in the page (WebDriver's, not the page's: the CSP does not
        /// apply) and returns its value.
        pub fn run(&self, script: &str) -> Value {
            self.call(
                "POST",
                "/execute/sync",
                Some(json!({ "script": script, "args": [] })),
            )
        }

        /// Chooses `path` in the file input `css`, as a person picking a file would.
        pub fn choose_file(&self, css: &str, path: &std::path::Path) {
            let id = self.one(css);
            self.call(
                "POST",
                &format!("/element/{id}/value"),
                Some(json!({ "text": path.to_str().unwrap() })),
            );
        }

        /// Sets the window's size (CSS pixels), as a phone's screen.
        pub fn resize(&self, width: u32, height: u32) {
            self.call(
                "POST",
                "/window/rect",
                Some(json!({ "width": width, "height": height })),
            );
        }

        /// Marks the document, to tell later whether it was reloaded.
        pub fn mark(&self) {
            self.run("window.__hearthMark = 'kept';");
        }

        pub fn still_marked(&self) -> bool {
            self.run("return window.__hearthMark === 'kept';") == json!(true)
        }

        /// Writes a PNG of the page to `TARGET/dashboard-screenshots/NAME.png`.
        pub fn screenshot(&self, name: &str) -> PathBuf {
            use base64::Engine as _;
            let data = self.call("GET", "/screenshot", None);
            let png = base64::engine::general_purpose::STANDARD
                .decode(data.as_str().unwrap())
                .unwrap();
            let bin = crate::cli::hearth_bin();
            let dir = bin
                .parent()
                .and_then(|p| p.parent())
                .unwrap()
                .join("dashboard-screenshots");
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}.png"));
            std::fs::write(&path, png).unwrap();
            path
        }
    }

    impl Drop for Browser {
        fn drop(&mut self) {
            let _ = self.agent.delete(&self.base).call();
            let _ = self.driver.kill();
            let _ = self.driver.wait();
        }
    }
}

/// For the benchmark binaries: the `q`-quantile (0..=1) of `samples`, in milliseconds
/// (nearest rank).
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::indexing_slicing
)]
pub fn quantile(samples: &[std::time::Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}
