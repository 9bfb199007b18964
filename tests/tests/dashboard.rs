//! The owner's dashboard, from the side of a browser and of a hostile web page: a
//! real node process, its pages fetched over HTTP with every header under the test's
//! control. (Browser tests in a real Chromium are not written yet.)

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

    // Nothing without a session, not even the style sheet.
    for path in ["/ui/devices", "/ui/exports", "/ui/app.css", "/ui/"] {
        let answer = raw(&addr, "GET", path, &addr, &[], "");
        assert_eq!(answer.status, 401, "{path}: {answer:?}");
        assert!(answer.body.contains("hearth dashboard"), "{path}");
    }
    // The bearer key of the API does not open the pages either.
    let key = std::fs::read_to_string(home.join("api.key")).unwrap();
    let bearer = format!("Bearer {}", key.trim());
    let answer = raw(
        &addr,
        "GET",
        "/ui/devices",
        &addr,
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(answer.status, 401);

    // A one-time link: a page on another site that rebinds a name to this address
    // gets nothing, and does not spend the link.
    let link = json_ok(&home, &["dashboard"]);
    let url = link["url"].as_str().unwrap();
    let path = &url[url.find("/ui/login").unwrap()..];
    let foreign = raw(&addr, "GET", path, "evil.example:80", &[], "");
    assert_eq!(foreign.status, 421, "{foreign:?}");
    let answer = raw(&addr, "GET", path, &addr, &[], "");
    assert_eq!(answer.status, 303);
    let cookie = answer.header("set-cookie").unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let again = raw(&addr, "GET", path, &addr, &[], "");
    assert_eq!(again.status, 403, "a second use fails");
    assert!(again.body.contains("used already or has expired"));

    let session = login(&home);
    let devices = session.get("/ui/devices");
    assert_eq!(devices.status, 200);
    assert!(
        devices.body.contains("<th scope=\"row\">home</th>"),
        "{}",
        devices.body
    );
    let csp = devices.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(session.get("/ui/app.css").status, 200);
    // The session does not work under another Host either.
    let cookie_header = [("Cookie", session.cookie.as_str())];
    assert_eq!(
        raw(
            &addr,
            "GET",
            "/ui/devices",
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
    let no_token = raw(&addr, "POST", "/ui/logout", &addr, &form, "");
    assert_eq!(no_token.status, 403, "{no_token:?}");
    let wrong = raw(&addr, "POST", "/ui/logout", &addr, &form, "csrf=00");
    assert_eq!(wrong.status, 403);
    let token = hearth_tests::dashboard::csrf(&devices.body);
    let mut cross_site = form.to_vec();
    cross_site.push(("Origin", "http://evil.example"));
    let answer = raw(
        &addr,
        "POST",
        "/ui/logout",
        &addr,
        &cross_site,
        &format!("csrf={token}"),
    );
    assert_eq!(answer.status, 403, "another site's form");
    assert_eq!(session.get("/ui/devices").status, 200, "still logged in");
    let out = session.post("/ui/devices", "/ui/logout", &[]);
    assert_eq!(out.status, 200);
    assert_eq!(session.get("/ui/devices").status, 401, "logged out");

    // Verifying every chain costs: not something a link can start.
    let session = login(&home);
    assert_eq!(session.get("/ui/audit/verify").status, 405);
    let verified = session.post("/ui/audit", "/ui/audit/verify", &[]);
    assert_eq!(verified.status, 200);
    assert!(verified.body.contains("intact"), "{}", verified.body);

    // Logins are audited.
    let entries = json_ok(&home, &["audit", "--action", "dashboard.login"]);
    assert_eq!(entries["entries"].as_array().unwrap().len(), 3);
    stop(node);
}
