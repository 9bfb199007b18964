//! The owner's dashboard, from the side of a browser and of a hostile web page: a
//! real node process, its pages fetched over HTTP with every header under the test's
//! control. The same pages in a real Chromium: `dashboard_browser.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use hearth_tests::cli::{init, json_ok, start_meshed, stop};
use hearth_tests::dashboard::{login, raw};

#[test]
fn pages_need_a_session_a_one_time_link_and_their_own_host_and_forms_their_token() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    init(&home);
    let node = start_meshed(&home);
    let addr = node.addr.clone();

    // The dashboard lives under a secret path: the link names it.
    let link = json_ok(&home, &["dashboard"]);
    let url = link["url"].as_str().unwrap();
    let path = &url[url.find("/ui/").unwrap()..];
    let base = path.split_once("/login").unwrap().0.to_owned();
    let secret = base.strip_prefix("/ui/").unwrap();
    assert_eq!(secret.len(), 32, "128 bits in hex: {base}");

    // Nothing without a session, not even the style sheet; nothing at all outside the
    // secret path, and a refusal does not tell the secret.
    for page in [
        "",
        "devices",
        "exports",
        "app.css",
        "events",
        "stores/readings",
    ] {
        let answer = raw(&addr, "GET", &format!("{base}/{page}"), &addr, &[], "");
        assert_eq!(answer.status, 401, "{page}: {answer:?}");
        assert!(answer.body.contains("hearth dashboard"), "{page}");
        assert!(!answer.body.contains(secret), "{page}");
    }
    for path in [
        "/ui/devices",
        "/ui/login?token=00",
        "/ui/",
        "/ui",
        "/ui/app.css",
    ] {
        let answer = raw(&addr, "GET", path, &addr, &[], "");
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        assert!(!answer.body.contains(secret), "{path}");
    }
    // The bearer key of the API does not open the pages either.
    let key = std::fs::read_to_string(home.join("api.key")).unwrap();
    let bearer = format!("Bearer {}", key.trim());
    let answer = raw(
        &addr,
        "GET",
        &format!("{base}/devices"),
        &addr,
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(answer.status, 401);

    // A one-time link: a page on another site that rebinds a name to this address
    // gets nothing, and does not spend the link.
    let foreign = raw(&addr, "GET", path, "evil.example:80", &[], "");
    assert_eq!(foreign.status, 421, "{foreign:?}");
    let answer = raw(&addr, "GET", path, &addr, &[], "");
    assert_eq!(answer.status, 303);
    assert_eq!(answer.header("location"), Some(&*format!("{base}/devices")));
    // The cookie goes back only under the secret path: browsers send a cookie of
    // 127.0.0.1 to every port of it, so any other local web server would get it
    // otherwise.
    let cookie = answer.header("set-cookie").unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        &format!("Path={base};"),
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let again = raw(&addr, "GET", path, &addr, &[], "");
    assert_eq!(again.status, 403, "a second use fails");
    assert!(again.body.contains("used already or has expired"));

    let session = login(&home);
    let devices = session.get("devices");
    assert_eq!(devices.status, 200);
    assert!(
        devices.body.contains("<th scope=\"row\">home</th>"),
        "{}",
        devices.body
    );
    let csp = devices.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert!(csp.contains("base-uri 'self'"), "{csp}");
    assert!(
        devices.body.contains(&format!("<base href=\"{base}/\">")),
        "links are relative to the secret path"
    );
    assert_eq!(session.get("app.css").status, 200);
    assert_eq!(
        session.get("").header("location"),
        Some(&*format!("{base}/devices")),
        "the secret path itself leads to the devices page"
    );
    // A page of the dashboard is nothing outside the secret path, even with a session.
    let cookie_header = [("Cookie", session.cookie.as_str())];
    assert_eq!(
        raw(&addr, "GET", "/ui/devices", &addr, &cookie_header, "").status,
        404
    );
    // The session does not work under another Host either.
    assert_eq!(
        raw(
            &addr,
            "GET",
            &format!("{base}/devices"),
            "rebound.example",
            &cookie_header,
            ""
        )
        .status,
        421
    );

    // State changes need the session's CSRF token, and nothing comes from other sites.
    let form = [
        ("Cookie", session.cookie.as_str()),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let logout = format!("{base}/logout");
    let no_token = raw(&addr, "POST", &logout, &addr, &form, "");
    assert_eq!(no_token.status, 403, "{no_token:?}");
    let wrong = raw(&addr, "POST", &logout, &addr, &form, "csrf=00");
    assert_eq!(wrong.status, 403);
    let token = hearth_tests::dashboard::csrf(&devices.body);
    let mut cross_site = form.to_vec();
    cross_site.push(("Origin", "http://evil.example"));
    let answer = raw(
        &addr,
        "POST",
        &logout,
        &addr,
        &cross_site,
        &format!("csrf={token}"),
    );
    assert_eq!(answer.status, 403, "another site's form");
    // The right token in a body that is not a form is refused too.
    let mut as_json = vec![("Cookie", session.cookie.as_str())];
    as_json.push(("Content-Type", "application/json"));
    let body = format!("{{\"csrf\":\"{token}\"}}");
    assert_eq!(
        raw(&addr, "POST", &logout, &addr, &as_json, &body).status,
        403
    );
    // Every form that changes something, without its token: refused, nothing done.
    json_ok(&home, &["store", "create", "notes", "--kind", "kv"]);
    for page in [
        "devices/invite",
        "devices/12D3KooWAbc/revoke",
        "drivers/add",
        "computations/verify",
        "approvals/review",
        "approvals/approve",
        "capabilities/00/revoke",
        "stores/notes/placement",
        "stores/notes/placement/apply",
        "exports/00/release",
        "exports/00/drop",
        "audit/verify",
        "logout",
    ] {
        let answer = raw(
            &addr,
            "POST",
            &format!("{base}/{page}"),
            &addr,
            &form,
            "csrf=00&kind=os-monitor&replicas=all&name=x",
        );
        assert_eq!(answer.status, 403, "{page}: {answer:?}");
    }
    assert!(
        json_ok(&home, &["driver", "ls"])["drivers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let notes = json_ok(&home, &["store", "ls"]);
    let notes = notes["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "notes")
        .unwrap();
    assert_eq!(notes["replicas"], "origin,role:home");
    assert!(
        json_ok(&home, &["audit", "--action", "mesh.invite"])["entries"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(session.get("devices").status, 200, "still logged in");
    let out = session.post("devices", "logout", &[]);
    assert_eq!(out.status, 200);
    assert_eq!(session.get("devices").status, 401, "logged out");

    // Verifying every chain costs: not something a link can start.
    let session = login(&home);
    assert_eq!(session.get("audit/verify").status, 405);
    let verified = session.post("audit", "audit/verify", &[]);
    assert_eq!(verified.status, 200);
    assert!(verified.body.contains("intact"), "{}", verified.body);

    // A manifest picked from the device's manifests folder, and nothing outside it.
    std::fs::create_dir_all(home.join("manifests")).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifests/places.toml"),
        home.join("manifests/places.toml"),
    )
    .unwrap();
    let listed = session.get("approvals");
    assert!(
        listed.body.contains("Review places.toml"),
        "{}",
        listed.body
    );
    let reviewed = session.post("approvals", "approvals/review", &[("file", "places.toml")]);
    assert!(reviewed.body.contains("id=\"review\""), "{}", reviewed.body);
    for outside in ["../node.key", "/etc/passwd", "places.toml/..", "api.key"] {
        let refused = session.post("approvals", "approvals/review", &[("file", outside)]);
        assert!(
            refused.body.contains("is not a manifest in this device"),
            "{outside}: {}",
            refused.body
        );
        assert!(!refused.body.contains("id=\"review\""));
    }

    // The audit filtered by time: a window in the future holds nothing, one around
    // now holds the logins; a time that does not read is said so.
    let future = session.get("audit?from=2999-01-01T00:00");
    assert!(!future.body.contains("<tr data-seq"), "{}", future.body);
    let now = session.get("audit?action=dashboard.login&from=2000-01-01&to=2999-01-01T00:00");
    assert!(
        now.body.contains("<td>dashboard.login</td>"),
        "{}",
        now.body
    );
    let bad = session.get("audit?from=yesterday");
    assert!(bad.body.contains("is not a time"), "{}", bad.body);

    // Logins are audited.
    let entries = json_ok(&home, &["audit", "--action", "dashboard.login"]);
    assert_eq!(entries["entries"].as_array().unwrap().len(), 3);
    stop(node);
}

/// A device without the owner key (here the cloud VM) gets the same pages, and the
/// same refusals as its CLI: it cannot re-place a store or invite a device from its
/// dashboard; each refusal is audited and changes nothing.
#[test]
fn a_device_without_the_owner_key_cannot_place_or_invite_from_its_dashboard() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, vm) = (tmp.path().join("home"), tmp.path().join("vm"));
    init(&home);
    let home_node = start_meshed(&home);
    json_ok(&home, &["store", "create", "notes", "--kind", "kv"]);
    hearth_tests::cli::join_all(&home, &[(&vm, "vm", "cloud")]);
    let vm_node = start_meshed(&vm);
    hearth_tests::cli::wait_until("the catalogue on the vm", 60, || {
        let listed = json_ok(&vm, &["store", "ls"]);
        listed["stores"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "notes")
            .then_some(())
    });

    let session = login(&vm);
    let preview = session.post(
        "stores",
        "stores/notes/placement",
        &[("replicas", "origin,role:home,vm")],
    );
    assert_eq!(preview.status, 200);
    assert!(
        preview
            .body
            .contains("<dd data-field=\"gain\"><code>vm</code></dd>"),
        "{}",
        preview.body
    );
    assert!(preview.body.contains("does not hold the owner key"));
    // Confirming a preview of another placement than the one in force is refused.
    let stale = session.post(
        "stores",
        "stores/notes/placement/apply",
        &[("replicas", "origin,role:home,vm"), ("previewed", "all")],
    );
    assert!(
        stale.body.contains("changed since the preview"),
        "{}",
        stale.body
    );
    let applied = session.post(
        "stores",
        "stores/notes/placement/apply",
        &[
            ("replicas", "origin,role:home,vm"),
            ("previewed", "origin,role:home"),
        ],
    );
    assert!(
        applied.body.contains("needs the owner&#39;s authority"),
        "{}",
        applied.body
    );
    let refused = json_ok(&vm, &["audit", "--action", "store.policy"]);
    let refused = refused["entries"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("refused")
    );
    for dir in [&home, &vm] {
        let listed = json_ok(dir, &["store", "ls"]);
        let notes = listed["stores"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "notes")
            .unwrap()
            .clone();
        assert_eq!(
            notes["replicas"],
            "origin,role:home",
            "on {}",
            dir.display()
        );
    }

    let invite = session.post("devices", "devices/invite", &[("name", "laptop")]);
    assert_eq!(invite.status, 200);
    assert!(invite.body.contains("class=\"error\""), "{}", invite.body);
    assert!(!invite.body.contains("id=\"ticket\""));
    stop(vm_node);
    stop(home_node);
}
