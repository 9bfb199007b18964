//! The NAT harness (`hearth_tests::netns`) builds what it says: a host behind a NAT
//! reaches a public host, which sees the router's public address; hosts behind
//! different NATs cannot reach each other directly, nor can the internet reach into a
//! LAN; links go down and up; dropping the internet leaves nothing behind. Skipped, with
//! the reason printed, only where the kernel refuses to create namespaces, and never
//! under `CI`.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::process::Command;

use hearth_tests::netns::{Host, Internet, NatKind};

/// Counts at `host` the ICMP packets from `source` (a CIDR): an iptables rule whose
/// counter [`icmp_counts`] reads, in the order the rules were added.
fn count_icmp_from(host: &Host, source: &str) {
    let out = host
        .iptables()
        .args(["-A", "INPUT", "-p", "icmp", "-s", source])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn icmp_counts(host: &Host) -> Vec<u64> {
    let out = host
        .iptables()
        .args(["-L", "INPUT", "-n", "-v", "-x"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two header lines, then one line per rule, its packet count first.
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .skip(2)
        .map(|line| line.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

fn stdout_lines(cmd: &mut Command) -> BTreeSet<String> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The root namespace's interfaces, by name.
fn root_links() -> BTreeSet<String> {
    stdout_lines(Command::new("ip").args(["-o", "link", "show"]))
        .iter()
        .filter_map(|line| line.split(": ").nth(1).map(str::to_owned))
        .collect()
}

#[test]
fn nat_topology_reachability_and_cleanup() {
    let links_before = root_links();
    let mut net = match Internet::create("t") {
        Ok(net) => net,
        Err(reason) => {
            hearth_tests::netns::skip_without_namespaces(&reason);
            return;
        }
    };
    let server = net.public_host("srv");
    let a = net.behind_nat("a", NatKind::EndpointIndependent);
    let b = net.behind_nat("b", NatKind::PortRandomising);
    let router_a = a.router().unwrap().public_addr();
    eprintln!(
        "routers use {}; srv {}, a {} behind {router_a}, b {} behind {}",
        net.iptables().unwrap(),
        server.addr(),
        a.addr(),
        b.addr(),
        b.public_addr()
    );
    assert_eq!(net.resolve("srv"), Some(server.addr()));
    assert_eq!(net.resolve("a"), Some(a.addr()));
    assert_eq!(net.resolve("a-nat"), Some(router_a));

    // (a) Out through the NAT, (b) seen from the router's public address only.
    count_icmp_from(&server, &format!("{router_a}/32"));
    count_icmp_from(&server, "10.0.0.0/8");
    assert!(a.ping(server.addr()), "a cannot reach the public host");
    assert!(b.ping(server.addr()), "b cannot reach the public host");
    let counts = icmp_counts(&server);
    assert!(
        matches!(counts.as_slice(), [from_router, 0] if *from_router >= 1),
        "srv should see a's ping from {router_a} and nothing from a LAN: {counts:?}"
    );

    // (d) No way between the LANs but mappings; none into a LAN from the internet, even
    // for a public host that routes the LAN's prefix to its router.
    assert!(!a.ping(b.addr()), "a reached b directly");
    assert!(!b.ping(a.addr()), "b reached a directly");
    let route = server
        .command("ip")
        .args(["route", "add", "10.1.0.0/24", "via", &router_a.to_string()])
        .status()
        .unwrap();
    assert!(route.success());
    assert!(
        !server.ping(a.addr()),
        "the router forwarded unsolicited inbound"
    );
    assert!(
        server.ping(router_a),
        "the router's public address answers pings"
    );

    // An unplugged host is cut off; plugged back, it is reachable again.
    a.set_link(false);
    assert!(!a.ping(server.addr()), "a reached srv with its link down");
    a.set_link(true);
    assert!(
        a.ping(server.addr()),
        "a is cut off after its link came back"
    );
    let router = a.router().unwrap();
    router.set_link(false);
    assert!(
        !a.ping(server.addr()),
        "a reached srv with its router disconnected"
    );
    router.set_link(true);
    assert!(
        a.ping(server.addr()),
        "a is cut off after its router came back"
    );

    match net.delay(20) {
        Ok(()) => assert!(a.ping(server.addr()), "a cannot reach srv with a delay"),
        Err(err) => eprintln!("NOTE: no delay on this kernel: {err}"),
    }

    // Dropping the internet deletes every namespace and leaves the root namespace as
    // it was.
    let namespaces: Vec<String> = net.namespaces().to_vec();
    assert_eq!(namespaces.len(), 6, "{namespaces:?}");
    drop(net);
    let left = stdout_lines(Command::new("ip").args(["netns", "list"]));
    for ns in &namespaces {
        assert!(
            !left
                .iter()
                .any(|line| line.split_whitespace().next() == Some(ns.as_str())),
            "{ns} is still there"
        );
    }
    let added: Vec<_> = root_links().difference(&links_before).cloned().collect();
    assert!(
        added.is_empty(),
        "new interfaces in the root namespace: {added:?}"
    );
}
