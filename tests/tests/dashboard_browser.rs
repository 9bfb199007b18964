//! The dashboard in a real headless Chromium over WebDriver, against real node
//! processes: the one-time login, the devices of a three-device mesh, a revocation
//! seen live, a chart with one point per reading, an audit entry appearing live, the
//! audit filtered. Screenshots of each page go to `target/dashboard-screenshots/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation
)]

use hearth_tests::cli::{json_ok, three_devices, wait_until};
use hearth_tests::webdriver::Browser;
use hearth_tests::work::append;

#[test]
fn the_owner_logs_in_sees_the_mesh_revokes_a_phone_and_reads_the_audit_live() {
    let tmp = tempfile::tempdir().unwrap();
    let mesh = three_devices(tmp.path());
    let home = mesh.home.clone();
    // Thirty readings in the last hours, to chart.
    json_ok(
        &home,
        &["store", "create", "readings", "--kind", "timeseries"],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let lines: Vec<String> = (0..30u64)
        .map(|i| {
            format!(
                r#"{{"ts": {}, "value": {{"load1": {}}}}}"#,
                now - 3_600_000 + i * 60_000,
                (i % 7) as f64 / 2.0
            )
        })
        .collect();
    append(&home, "readings", &lines);

    let browser = Browser::start();
    let link = json_ok(&home, &["dashboard"]);
    let url = link["url"].as_str().unwrap().to_owned();
    browser.goto(&url);
    assert!(browser.url().ends_with("/ui/devices"), "{}", browser.url());
    wait_until("three devices, the phone online", 60, || {
        let rows = browser.all("tr[data-device]").len();
        let phone = browser.text("tr[data-device='phone'] td[data-field='online']");
        (rows == 3 && phone == "online").then_some(())
    });
    browser.screenshot("devices");
    // The link works once.
    let base = url[..url.find("/ui/").unwrap()].to_owned();
    browser.goto(&url);
    assert!(browser.source().contains("used already or has expired"));

    // Revoke the phone: a confirmation that says what it means, then the row changes
    // without a reload.
    browser.goto(&format!("{base}/ui/devices"));
    browser.click("tr[data-device='phone'] a.danger");
    assert!(
        browser
            .text("main")
            .contains("removes it from your mesh for good")
    );
    browser.screenshot("revoke");
    browser.click("main form button.danger");
    assert!(
        browser.url().ends_with("/ui/devices"),
        "{}: {}",
        browser.url(),
        browser.text("body")
    );
    browser.mark();
    wait_until("the phone to go offline on the page", 60, || {
        let online = browser.text("tr[data-device='phone'] td[data-field='online']");
        (online == "offline").then_some(())
    });
    assert!(browser.still_marked(), "the page was not reloaded");
    assert_eq!(
        browser.text("tr[data-device='phone'] td[data-field='state']"),
        "revoked"
    );

    // A chart with one point per reading.
    browser.goto(&format!("{base}/ui/stores"));
    assert!(!browser.all("tr[data-store='readings'] a").is_empty());
    browser.screenshot("stores");
    browser.goto(&format!("{base}/ui/stores/readings?field=load1&hours=6"));
    assert_eq!(browser.all("svg.chart circle.point").len(), 30);
    browser.screenshot("store-chart");

    // An audit entry appears live.
    browser.goto(&format!("{base}/ui/audit"));
    browser.mark();
    json_ok(&home, &["store", "create", "notes", "--kind", "kv"]);
    wait_until("the new audit entry on the page", 30, || {
        let rows = browser.all("table[data-live='audit'] tbody tr");
        let first = browser.text("table[data-live='audit'] tbody tr:first-child");
        (!rows.is_empty() && first.contains("store.")).then_some(())
    });
    assert!(browser.still_marked(), "the page was not reloaded");
    browser.screenshot("audit");

    // Filter the audit.
    browser.type_into("form.filters input[name='action']", "dashboard.");
    browser.click("form.filters button[type='submit']");
    assert!(
        browser.url().contains("action=dashboard."),
        "{}",
        browser.url()
    );
    assert!(!browser.all("table tbody tr").is_empty());
    let text = browser.text("table tbody");
    for line in text.lines() {
        assert!(line.contains("dashboard."), "{line}");
    }

    // Every chain verified, and the exports page.
    browser.goto(&format!("{base}/ui/audit/verify"));
    assert!(browser.text("tr[data-log='home']").contains("intact"));
    browser.goto(&format!("{base}/ui/exports"));
    browser.screenshot("exports");
    drop(mesh);
}
