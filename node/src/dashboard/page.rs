//! The dashboard's page frame: the same header, navigation and footer on every page,
//! and escaping for everything that goes into HTML.

use std::fmt::Write as _;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::Ctx;

/// The pages built so far, in the order of the navigation.
/// Links are relative to the page's `<base>`, the dashboard's secret path.
const PAGES: [(&str, &str); 8] = [
    ("Devices", "devices"),
    ("Stores", "stores"),
    ("Approvals", "approvals"),
    ("Capabilities", "capabilities"),
    ("Computations", "computations"),
    ("Drivers", "drivers"),
    ("Audit", "audit"),
    ("Exports", "exports"),
];

/// `text` made safe inside HTML text and attribute values.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Line ends and tabs are text; other control characters are shown, not
            // sent to the browser.
            // Direction overrides and invisible characters are shown too: what data
            // says cannot be made to read as something else.
            c if (c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}') =>
            {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// `text` made safe inside HTML exactly as it is, invisible characters included: for
/// what the browser sends back (a text area's contents, a hidden field), where
/// [`esc`]'s visible codes would change the text.
pub(super) fn esc_exact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` as one URL path segment: every byte but unreserved characters escaped (and
/// the dots of `.` and `..`, which a browser would resolve as a path).
pub(super) fn segment(text: &str) -> String {
    if text == "." || text == ".." {
        return "%2E".repeat(text.len());
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A page being written.
#[derive(Debug)]
pub(super) struct Page {
    title: String,
    ctx: Ctx,
    body: String,
    status: StatusCode,
    /// What the page's live stream carries beyond devices, drivers and the audit.
    live_with: Option<&'static str>,
}

impl Page {
    pub(super) fn new(title: &str, ctx: &Ctx) -> Self {
        Self {
            title: title.to_owned(),
            ctx: ctx.clone(),
            body: String::new(),
            status: StatusCode::OK,
            live_with: None,
        }
    }

    /// Answers with `status` instead of 200.
    pub(super) fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Asks the live stream for `what` too (`sync`: each store's sync state).
    pub(super) fn live_with(&mut self, what: &'static str) {
        self.live_with = Some(what);
    }

    /// Adds HTML (already escaped where it holds data).
    pub(super) fn push(&mut self, html: &str) {
        self.body.push_str(html);
    }

    /// The body written so far, to write into.
    pub(super) fn body_mut(&mut self) -> &mut String {
        &mut self.body
    }

    /// Adds an error, in a sentence.
    pub(super) fn error(&mut self, message: &str) {
        let _ = write!(
            self.body,
            "<p class=\"error\" role=\"alert\">{}</p>",
            esc(message)
        );
    }

    /// The hidden field every form carries.
    pub(super) fn csrf_field(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(self.ctx.csrf())
        )
    }

    fn render(&self) -> String {
        let nav: String = PAGES
            .iter()
            .map(|(name, href)| {
                let current = if self.title == *name
                    || self.title.starts_with(&format!("{name} "))
                    || (*name == "Stores" && self.title.starts_with("Store "))
                {
                    " aria-current=\"page\""
                } else {
                    ""
                };
                format!("<li><a href=\"{href}\"{current}>{name}</a></li>")
            })
            .collect();
        let main = format!(
            "<nav aria-label=\"Pages\"><ul>{nav}</ul><span id=\"live\" role=\"status\" class=\"muted\"></span><form method=\"post\" action=\"logout\">{}<button type=\"submit\">Log out</button></form></nav>\
             <main><h1>{}</h1>{}</main>",
            self.csrf_field(),
            esc(&self.title),
            self.body
        );
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <base href=\"{base}\"><title>{title} · Hearth</title>\
             <link rel=\"stylesheet\" href=\"app.css\"><script src=\"app.js\" defer></script>\
             </head><body{with}>{main}</body></html>",
            with = self
                .live_with
                .map_or_else(String::new, |w| format!(" data-with=\"{}\"", esc(w))),
            base = esc(&self.ctx.url("")),
            title = esc(&self.title),
        )
    }

    /// A whole document around `body` (HTML), for answers to requests without a
    /// session: no style, no script, and nothing of the secret path.
    pub(super) fn bare(title: &str, body: &str) -> String {
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <title>{} · Hearth</title></head><body>{body}</body></html>",
            esc(title)
        )
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        (self.status, Html(self.render())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_is_never_a_dot_path_and_exact_escaping_keeps_every_character() {
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(segment("."), "%2E");
        assert_eq!(segment("a.b"), "a.b");
        assert_eq!(esc_exact("a\u{200b}<b>"), "a\u{200b}&lt;b&gt;");
        assert_ne!(esc("a\u{200b}"), "a\u{200b}");
    }

    #[test]
    fn data_cannot_become_markup() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(esc("a\u{1b}b"), "a\\u{1b}b");
        assert_eq!(esc("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
