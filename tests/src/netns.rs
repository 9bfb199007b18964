//! NAT topologies in network namespaces: an "internet" (a bridge in its own namespace,
//! subnet 198.18.0.0/24, the benchmarking range), public hosts on it, and hosts behind
//! NAT routers, each router with its own LAN. Everything lives in namespaces named
//! `h{pid}{tag}-…`; nothing is created in the root namespace, and dropping the
//! [`Internet`] deletes every namespace (the routers' iptables rules go with them).
//!
//! ```text
//!                 internet (bridge br0, 198.18.0.0/24)
//!        ┌──────────────┼──────────────────────┐
//!   public host    router "a-nat" (wan)    router "b-nat" (wan)
//!   198.18.0.2     198.18.0.3              198.18.0.4
//!                     │ lan 10.1.0.1          │ lan 10.2.0.1
//!                  host "a" 10.1.0.2        host "b" 10.2.0.2
//! ```
//!
//! A router masquerades its LAN behind its public address ([`NatKind`]), forwards from
//! the internet to its LAN only what conntrack relates to a mapping, and drops
//! unsolicited inbound on its public interface (ping excepted). It has no route into
//! other LANs, so hosts behind different routers reach each other only through NAT
//! mappings.
//!
//! Needs root, `ip` (iproute2), `iptables` (either the nf_tables or the legacy variant;
//! `HEARTH_NAT_IPTABLES` picks one) and, for [`Host::ping`], `ping` (iputils-ping);
//! [`Internet::delay`] needs the kernel's netem qdisc.
//!
//! Processes started in the namespaces should be stopped before the `Internet` is
//! dropped (declare them after it): a namespace with a process still in it outlives
//! its name.

// A harness: a setup step that fails fails the test that asked for it.
#![allow(clippy::panic)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// What a test does when the kernel refuses to create network namespaces (an
/// unprivileged container): it is skipped, saying why, except under `CI=true`, where
/// the namespace tests must run and such a machine fails them.
///
/// # Panics
///
/// Under `CI`, always.
pub fn skip_without_namespaces(reason: &str) {
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "CI must run the namespace tests, but the kernel refuses a network namespace: {reason}"
        );
    }
    #[allow(clippy::print_stderr)]
    {
        eprintln!("SKIPPED: the kernel refuses to create a network namespace here: {reason}");
    }
}

/// The internet's subnet, with its prefix length.
pub const INTERNET_SUBNET: &str = "198.18.0.0/24";

/// The iptables variants tried, in order, when `HEARTH_NAT_IPTABLES` does not name one.
const IPTABLES: [&str; 3] = ["iptables-nft", "iptables-legacy", "iptables"];

/// How a router maps its LAN's connections to its public address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Plain `MASQUERADE`: Linux keeps a connection's source port when it is free, so
    /// one local port maps to one public port whatever the destination
    /// (endpoint-independent mapping; filtering stays address-and-port-dependent).
    /// Simultaneous UDP hole punching between two such routers works.
    EndpointIndependent,
    /// `MASQUERADE --random-fully`: every connection gets a random public port, so the
    /// port a peer learnt through a third party is not the one used towards it (a
    /// symmetric NAT, as far as hole punching can tell). Hole punching fails.
    PortRandomising,
}

/// An internet of namespaces: build hosts with [`Internet::public_host`] and
/// [`Internet::behind_nat`]; dropping it deletes them all.
#[derive(Debug)]
pub struct Internet {
    /// `h{pid}{tag}`: every namespace's name starts with it and a dash.
    prefix: String,
    /// The namespace holding the bridge.
    net: String,
    /// Every namespace created, in order (deleted in reverse).
    namespaces: Vec<String>,
    /// The iptables command that works here, or why none does.
    iptables: Result<String, String>,
    /// The last host part used in 198.18.0.0/24 (.1 stays unused).
    last_public: u8,
    /// The last bridge port (`p1`, `p2`, …) and LAN number (10.N.0.0/24).
    last_port: u8,
    last_lan: u8,
    /// Names published to the namespaces' hosts files ([`Internet::publish_name`]).
    published: Vec<(String, Ipv4Addr)>,
    /// Routers' namespaces, for [`Internet::delay`].
    routers: Vec<String>,
    /// The delay set by [`Internet::delay`], for routers built later.
    delay_ms: Option<u32>,
    /// Names given to addresses: every host under its name, every router under
    /// `{name}-nat`, and whatever [`Internet::set_name`] adds.
    names: BTreeMap<String, Ipv4Addr>,
}

/// A host: on the internet, or behind a router. A handle of names and addresses; the
/// namespaces belong to the [`Internet`].
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    namespace: String,
    addr: Ipv4Addr,
    /// The namespace and interface that [`Host::set_link`] turns off: the far end of
    /// the host's cable (a bridge port, or the router's `lan`).
    link: (String, String),
    router: Option<Router>,
    iptables: Result<String, String>,
}

/// A NAT router in front of one host.
#[derive(Debug, Clone)]
pub struct Router {
    namespace: String,
    public_addr: Ipv4Addr,
    lan_addr: Ipv4Addr,
    kind: NatKind,
    /// Its bridge port in the internet namespace.
    port: String,
    net: String,
    iptables: Result<String, String>,
}

impl Internet {
    /// An empty internet: the bridge namespace `h{pid}{tag}-net`. `tag` (1–6 ASCII
    /// letters or digits, a letter first) keeps several internets of one process
    /// apart. `Err` only when the kernel refuses to create a namespace (the caller
    /// skips, saying why).
    ///
    /// # Panics
    ///
    /// When `tag` is malformed, `ip` cannot run, the namespace already
    /// exists, or a later setup step fails.
    pub fn create(tag: &str) -> Result<Self, String> {
        // Led by a letter, so that `h{pid}{tag}` cannot be read another way.
        if !tag.starts_with(|c: char| c.is_ascii_alphabetic()) {
            panic!("tag {tag:?}: it must start with a letter");
        }
        check_name("tag", tag, 6);
        let prefix = format!("h{}{tag}", std::process::id());
        let net = format!("{prefix}-net");
        if std::path::Path::new("/run/netns").join(&net).exists() {
            panic!("namespace {net} exists already: is tag {tag:?} used twice at once?");
        }
        let out = Command::new("ip")
            .args(["netns", "add", &net])
            .output()
            .unwrap_or_else(|err| panic!("`ip` runs (install iproute2): {err}"));
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        let mut internet = Self {
            prefix,
            net: net.clone(),
            namespaces: vec![net.clone()],
            iptables: Err(String::new()), // found below
            last_public: 1,
            last_port: 0,
            last_lan: 0,
            routers: Vec::new(),
            published: Vec::new(),
            delay_ms: None,
            names: BTreeMap::new(),
        };
        // Frames crossing the bridge skip this namespace's iptables.
        let nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        sh(&net, &format!("[ ! -e {nf} ] || echo 0 > {nf}")).unwrap_or_else(|e| fail(&e));
        ip(&["-n", &net, "link", "add", "br0", "type", "bridge"]).unwrap_or_else(|e| fail(&e));
        ip(&["-n", &net, "link", "set", "br0", "up"]).unwrap_or_else(|e| fail(&e));
        internet.iptables = find_iptables(&net);
        Ok(internet)
    }

    /// A host on the internet, at the next free address of 198.18.0.0/24, in namespace
    /// `h{pid}{tag}-{name}` (`name`: 1–8 ASCII letters or digits, unique).
    ///
    /// # Panics
    ///
    /// When the name is taken or malformed, or a setup step fails.
    pub fn public_host(&mut self, name: &str) -> Host {
        self.check_free(name);
        let namespace = self.add_namespace(name);
        let (addr, port) = self.attach(&namespace, "eth0").unwrap_or_else(|e| fail(&e));
        self.names.insert(name.to_owned(), addr);
        Host {
            name: name.to_owned(),
            namespace,
            addr,
            link: (self.net.clone(), port),
            router: None,
            iptables: self.iptables.clone(),
        }
    }

    /// A host alone on a LAN 10.N.0.0/24 (host .2, default route via .1) behind a NAT
    /// router of `kind` whose public interface takes the next free internet address.
    /// The host's namespace is `h{pid}{tag}-{name}`, the router's
    /// `h{pid}{tag}-{name}-nat`.
    ///
    /// # Panics
    ///
    /// When the name is taken or malformed, no iptables works here, or a setup step
    /// fails.
    pub fn behind_nat(&mut self, name: &str, kind: NatKind) -> Host {
        self.check_free(name);
        let iptables = match &self.iptables {
            Ok(cmd) => cmd.clone(),
            Err(why) => panic!("a NAT router needs iptables (install it): {why}"),
        };
        let lan = match self.last_lan.checked_add(1) {
            Some(lan) if lan < 255 => lan,
            _ => panic!("out of LANs"),
        };
        self.last_lan = lan;
        let router_ns = self.add_namespace(&format!("{name}-nat"));
        let host_ns = self.add_namespace(name);
        let lan_addr = Ipv4Addr::new(10, lan, 0, 1);
        let addr = Ipv4Addr::new(10, lan, 0, 2);
        let (public_addr, port) = self.attach(&router_ns, "wan").unwrap_or_else(|e| fail(&e));
        let random = match kind {
            NatKind::EndpointIndependent => "",
            NatKind::PortRandomising => " --random-fully",
        };
        let masquerade = format!("-t nat -A POSTROUTING -o wan -j MASQUERADE{random}");
        let rules = [
            masquerade.as_str(),
            // Into the LAN only what belongs to a mapping.
            "-P FORWARD DROP",
            "-A FORWARD -i lan -o wan -j ACCEPT",
            "-A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            // Unsolicited inbound to the router itself is dropped before conntrack keeps
            // it: a kept entry for a peer's early hole-punching packet would make
            // MASQUERADE pick another port for the host's own packet to that peer (the
            // tuples clash), and punching would fail even between endpoint-independent
            // routers. Home routers' default-deny firewalls behave the same.
            "-A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A INPUT -i wan -p icmp --icmp-type echo-request -j ACCEPT",
            "-A INPUT -i wan -j DROP",
        ];
        let setup = || -> Result<(), String> {
            let (r, h) = (router_ns.as_str(), host_ns.as_str());
            ip(&[
                "-n", r, "link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", h,
            ])?;
            let (gateway, lan_cidr) = (lan_addr.to_string(), format!("{lan_addr}/24"));
            ip(&["-n", r, "addr", "add", &lan_cidr, "dev", "lan"])?;
            ip(&["-n", r, "link", "set", "lan", "up"])?;
            ip(&["-n", h, "addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&["-n", h, "link", "set", "eth0", "up"])?;
            ip(&["-n", h, "route", "add", "default", "via", &gateway])?;
            sh(r, "echo 1 > /proc/sys/net/ipv4/ip_forward")?;
            for rule in rules {
                run(exec(r, &iptables).arg("-w").args(rule.split_whitespace()))?;
            }
            if let Some(ms) = self.delay_ms {
                netem(r, "wan", ms)?;
            }
            Ok(())
        };
        setup().unwrap_or_else(|e| fail(&e));
        self.routers.push(router_ns.clone());
        self.names.insert(format!("{name}-nat"), public_addr);
        self.names.insert(name.to_owned(), addr);
        Host {
            name: name.to_owned(),
            namespace: host_ns,
            addr,
            link: (router_ns.clone(), "lan".to_owned()),
            router: Some(Router {
                namespace: router_ns,
                public_addr,
                lan_addr,
                kind,
                port,
                net: self.net.clone(),
                iptables: Ok(iptables),
            }),
            iptables: self.iptables.clone(),
        }
    }

    /// Delays every datagram leaving a router for the internet by `ms` milliseconds
    /// (netem on its public interface), for the routers built so far and later ones.
    /// `Err` when the kernel has no netem (the caller decides whether to skip).
    pub fn delay(&mut self, ms: u32) -> Result<(), String> {
        // Probed on the bridge namespace's loopback, so that an internet without
        // routers answers too.
        netem(&self.net, "lo", 0).map_err(|err| format!("netem is unavailable: {err}"))?;
        run(exec(&self.net, "tc").args(["qdisc", "del", "dev", "lo", "root"]))?;
        for router in &self.routers {
            netem(router, "wan", ms)?;
        }
        self.delay_ms = Some(ms);
        Ok(())
    }

    /// Gives `name` to `addr`, for [`Internet::resolve`].
    pub fn set_name(&mut self, name: &str, addr: Ipv4Addr) {
        self.names.insert(name.to_owned(), addr);
    }

    /// The address named `name`: a host's own address under its name, a router's
    /// public address under `{name}-nat`, or one given by [`Internet::set_name`].
    pub fn resolve(&self, name: &str) -> Option<Ipv4Addr> {
        self.names.get(name).copied()
    }

    /// Publishes `name` for `addr` to programs run in the namespaces (through
    /// [`exec`]): every namespace gets a hosts file (`/etc/netns/NAMESPACE/hosts`,
    /// which `ip netns exec` mounts over `/etc/hosts`) naming it, so that a DNS name
    /// such as `cloud.hearth.test` resolves there. The files go with the internet.
    ///
    /// # Panics
    ///
    /// When a hosts file cannot be written.
    pub fn publish_name(&mut self, name: &str, addr: Ipv4Addr) {
        self.published.push((name.to_owned(), addr));
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, addr) in &self.published {
            text.push_str(&format!("{addr} {name}\n"));
        }
        for namespace in &self.namespaces {
            let dir = std::path::Path::new("/etc/netns").join(namespace);
            std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(dir.join("hosts"), &text))
                .unwrap_or_else(|err| panic!("writing {}/hosts: {err}", dir.display()));
        }
    }

    /// The `h{pid}{tag}` that starts every namespace's name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every namespace created so far, the bridge's first.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The iptables command used in the routers (`iptables-nft`, `iptables-legacy`, …).
    pub fn iptables(&self) -> Result<&str, &str> {
        self.iptables.as_deref().map_err(String::as_str)
    }

    /// Panics unless `name` is a well-formed host name not used yet.
    fn check_free(&self, name: &str) {
        check_name("host name", name, 8);
        if name == "net" || self.names.contains_key(name) {
            panic!("the name {name:?} is taken");
        }
    }

    /// Creates namespace `{prefix}-{name}`, its loopback up.
    fn add_namespace(&mut self, name: &str) -> String {
        let namespace = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &namespace]).unwrap_or_else(|e| fail(&e));
        self.namespaces.push(namespace.clone());
        ip(&["-n", &namespace, "link", "set", "lo", "up"]).unwrap_or_else(|e| fail(&e));
        namespace
    }

    /// A veth from `namespace` (named `iface`) to a new port of the bridge, with the
    /// next internet address; returns the address and the port's name.
    fn attach(&mut self, namespace: &str, iface: &str) -> Result<(Ipv4Addr, String), String> {
        let (Some(host), Some(port)) = (
            self.last_public.checked_add(1).filter(|n| *n < 255),
            self.last_port.checked_add(1),
        ) else {
            return Err("the internet is full (253 addresses)".to_owned());
        };
        self.last_public = host;
        self.last_port = port;
        let addr = Ipv4Addr::new(198, 18, 0, host);
        let port = format!("p{port}");
        let net = self.net.as_str();
        ip(&[
            "-n", namespace, "link", "add", iface, "type", "veth", "peer", "name", &port, "netns",
            net,
        ])?;
        ip(&["-n", net, "link", "set", &port, "master", "br0"])?;
        ip(&["-n", net, "link", "set", &port, "up"])?;
        let cidr = format!("{addr}/24");
        ip(&["-n", namespace, "addr", "add", &cidr, "dev", iface])?;
        ip(&["-n", namespace, "link", "set", iface, "up"])?;
        Ok((addr, port))
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        for namespace in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", namespace]);
            if !self.published.is_empty() {
                let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(namespace));
            }
        }
    }
}

impl Host {
    /// The name it was built with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace's name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The address of its interface (`eth0`): on the internet, or on its LAN.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The address the internet sees it from: its own, or its router's.
    pub fn public_addr(&self) -> Ipv4Addr {
        self.router.as_ref().map_or(self.addr, |r| r.public_addr)
    }

    /// Its NAT router, if it has one.
    pub fn router(&self) -> Option<&Router> {
        self.router.as_ref()
    }

    /// `program` in the host's namespace (`ip netns exec NS program`); add arguments.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        exec(&self.namespace, program)
    }

    /// `iptables -w` (the variant the routers use) in the host's namespace.
    ///
    /// # Panics
    ///
    /// When no iptables works here.
    pub fn iptables(&self) -> Command {
        iptables_in(&self.namespace, &self.iptables)
    }

    /// Unplugs (`false`) or plugs back (`true`) the host's cable: the far end goes down,
    /// so the host keeps its address and routes, as with a real cable.
    ///
    /// # Panics
    ///
    /// When `ip` fails.
    pub fn set_link(&self, up: bool) {
        let (namespace, iface) = &self.link;
        let state = if up { "up" } else { "down" };
        ip(&["-n", namespace, "link", "set", iface, state]).unwrap_or_else(|e| fail(&e));
    }

    /// Whether one ping (`ping -c1 -W2`) from the host to `target` is answered.
    ///
    /// # Panics
    ///
    /// When `ping` is not installed (so that "unreachable" never means "missing").
    pub fn ping(&self, target: Ipv4Addr) -> bool {
        ping_from(&self.namespace, target)
    }
}

impl Router {
    /// Its namespace's name.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Its address on the internet (`wan`), which its host's connections leave from.
    pub fn public_addr(&self) -> Ipv4Addr {
        self.public_addr
    }

    /// Its address on its LAN (`lan`), the host's gateway.
    pub fn lan_addr(&self) -> Ipv4Addr {
        self.lan_addr
    }

    /// How it maps connections.
    pub fn kind(&self) -> NatKind {
        self.kind
    }

    /// `program` in the router's namespace (`conntrack -L`, `cat /proc/net/nf_conntrack`…).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        exec(&self.namespace, program)
    }

    /// `iptables -w` in the router's namespace.
    pub fn iptables(&self) -> Command {
        iptables_in(&self.namespace, &self.iptables)
    }

    /// Disconnects (`false`) or reconnects (`true`) the router from the internet: its
    /// bridge port goes down; its mappings stay.
    ///
    /// # Panics
    ///
    /// When `ip` fails.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.net, "link", "set", &self.port, state]).unwrap_or_else(|e| fail(&e));
    }

    /// Whether one ping (`ping -c1 -W2`) from the router to `target` is answered.
    ///
    /// # Panics
    ///
    /// When `ping` is not installed.
    pub fn ping(&self, target: Ipv4Addr) -> bool {
        ping_from(&self.namespace, target)
    }
}

/// `program` in `namespace`: `ip netns exec NAMESPACE PROGRAM`; add its arguments.
pub fn exec(namespace: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", namespace]).arg(program);
    cmd.stdin(Stdio::null());
    cmd
}

fn iptables_in(namespace: &str, iptables: &Result<String, String>) -> Command {
    match iptables {
        Ok(cmd) => {
            let mut cmd = exec(namespace, cmd);
            cmd.arg("-w");
            cmd
        }
        Err(why) => panic!("no iptables works here (install iptables): {why}"),
    }
}

fn ping_from(namespace: &str, target: Ipv4Addr) -> bool {
    if let Err(err) = Command::new("ping").arg("-V").output() {
        panic!("`ping` does not run (install iputils-ping): {err}");
    }
    exec(namespace, "ping")
        .args(["-c1", "-W2", &target.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The iptables to use: `HEARTH_NAT_IPTABLES` if set and not empty, else the first of
/// [`IPTABLES`] whose nat table answers in `namespace`.
fn find_iptables(namespace: &str) -> Result<String, String> {
    let chosen = std::env::var("HEARTH_NAT_IPTABLES")
        .ok()
        .filter(|cmd| !cmd.is_empty());
    let candidates: Vec<&str> = match &chosen {
        Some(cmd) => vec![cmd.as_str()],
        None => IPTABLES.to_vec(),
    };
    let mut why = Vec::new();
    for cmd in candidates {
        match run(exec(namespace, cmd).args(["-w", "-t", "nat", "-S"])) {
            Ok(()) => return Ok(cmd.to_owned()),
            Err(err) => why.push(err),
        }
    }
    Err(why.join("; "))
}

/// Sets `root netem delay {ms}ms` on `dev` in `namespace`.
fn netem(namespace: &str, dev: &str, ms: u32) -> Result<(), String> {
    let delay = format!("{ms}ms");
    run(exec(namespace, "tc").args([
        "qdisc", "replace", "dev", dev, "root", "netem", "delay", &delay,
    ]))
}

fn ip(args: &[&str]) -> Result<(), String> {
    run(Command::new("ip").args(args))
}

/// `script` run by `sh` in `namespace` (for /proc/sys, without needing `sysctl`).
fn sh(namespace: &str, script: &str) -> Result<(), String> {
    run(exec(namespace, "sh").args(["-c", script]))
}

/// Runs `cmd`; `Err` with its stderr when it fails.
fn run(cmd: &mut Command) -> Result<(), String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|err| format!("{shown}: {err}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn check_name(what: &str, name: &str, max: usize) {
    if name.is_empty() || name.len() > max || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
        panic!("{what} {name:?}: 1 to {max} ASCII letters or digits");
    }
}

fn fail(err: &str) -> ! {
    panic!("setting up the namespaces: {err}")
}

/// A thread inside a namespace that runs what it is given: sockets it opens (and threads
/// it starts) are in that namespace, so a test in the root namespace can reach a node's
/// loopback API there.
#[derive(Debug)]
pub struct Worker {
    jobs: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
}

impl Worker {
    /// A thread that joined `namespace`'s network namespace.
    ///
    /// # Panics
    ///
    /// When the namespace cannot be opened or joined.
    pub fn enter(namespace: &str) -> Self {
        let path = std::path::Path::new("/run/netns").join(namespace);
        let file = std::fs::File::open(&path)
            .unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(64);
        let (ready, joined) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            let entered = rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&file),
                Some(rustix::thread::LinkNameSpaceType::Network),
            );
            let ok = entered.is_ok();
            let _ = ready.send(entered.map_err(|err| err.to_string()));
            if ok {
                for job in queue {
                    job();
                }
            }
        });
        match joined.recv() {
            Ok(Ok(())) => Self { jobs },
            Ok(Err(err)) => panic!("joining namespace {namespace}: {err}"),
            Err(_) => panic!("the thread for namespace {namespace} stopped"),
        }
    }

    /// Runs `job` in the namespace and returns what it returns.
    ///
    /// # Panics
    ///
    /// When the job panics.
    pub fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(job());
            }))
            .unwrap_or_else(|_| panic!("the namespace's thread stopped"));
        result
            .recv()
            .unwrap_or_else(|_| panic!("a job in the namespace panicked"))
    }
}
