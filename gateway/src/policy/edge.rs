//! Small request policies at the edge, each a pure function tested alone:
//! which paths are MCP endpoints, whether an Origin is allowed, which HTTP
//! methods an endpoint takes, whether a client accepts an event stream.

use crate::reject::Reject;

/// The MCP endpoints a pool serves under its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Streamable HTTP (2025-03-26 onwards, and stateless 2026-07-28).
    Mcp,
    /// Legacy HTTP+SSE stream (2024-11-05).
    Sse,
    /// Legacy HTTP+SSE message POSTs.
    Messages,
}

pub fn endpoint(rest: &str) -> Option<Endpoint> {
    match rest.trim_end_matches('/') {
        "/mcp" => Some(Endpoint::Mcp),
        "/sse" => Some(Endpoint::Sse),
        "/messages" | "/message" => Some(Endpoint::Messages),
        _ => None,
    }
}

/// The Origin step: browsers' requests from other sites are refused
/// (DNS-rebinding protection); requests without Origin are not from a browser.
pub fn check_origin(origin: Option<&str>, allowed: &[String]) -> Result<(), Reject> {
    match origin {
        Some(o) if !origin_allowed(o, allowed) => Err(Reject::Origin),
        _ => Ok(()),
    }
}

/// The method step: what each endpoint takes, before any body is read.
pub fn check_method(
    endpoint: Endpoint,
    method: &http::Method,
    accept: Option<&str>,
    has_session: bool,
) -> Result<(), Reject> {
    use http::Method as M;
    match (endpoint, method) {
        (Endpoint::Mcp, &M::POST) | (Endpoint::Messages, &M::POST) => Ok(()),
        (Endpoint::Mcp, &M::GET) if !accepts_event_stream(accept) => Err(Reject::NotAcceptable(
            "GET /mcp needs Accept: text/event-stream",
        )),
        (Endpoint::Mcp, &M::GET) if !has_session => Err(Reject::BadRequest(
            "GET /mcp needs an Mcp-Session-Id (stateless clients have no server stream)",
        )),
        (Endpoint::Mcp, &M::DELETE) if !has_session => {
            Err(Reject::BadRequest("DELETE /mcp needs an Mcp-Session-Id"))
        }
        (Endpoint::Mcp, &M::GET) | (Endpoint::Mcp, &M::DELETE) | (Endpoint::Sse, &M::GET) => Ok(()),
        (Endpoint::Mcp, _) => Err(Reject::Method {
            allow: "GET, POST, DELETE",
        }),
        (Endpoint::Sse, _) => Err(Reject::Method { allow: "GET" }),
        (Endpoint::Messages, _) => Err(Reject::Method { allow: "POST" }),
    }
}

/// Origin allow-list: exact entries, "*" for any, and "scheme://host:*" for
/// any port of a host. Matching ignores ASCII case.
pub fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    let origin = origin.trim().to_ascii_lowercase();
    allowed.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        if entry == "*" || entry == origin {
            return true;
        }
        match entry.strip_suffix(":*") {
            Some(base) => match origin.strip_prefix(base) {
                Some("") => true,
                Some(port) => port
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())),
                None => false,
            },
            None => false,
        }
    })
}

pub fn accepts_event_stream(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let media = part.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("text/event-stream") || media == "*/*"
        })
    })
}

/// Reads one query parameter (the legacy session id) without allocating a map.
pub fn query_param<'a>(query: Option<&'a str>, names: &[&str]) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        names.contains(&k).then_some(v)
    })
}

/// Decodes %XX escapes (and '+' as space) in a query value.
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(endpoint("/mcp"), Some(Endpoint::Mcp));
        assert_eq!(endpoint("/mcp/"), Some(Endpoint::Mcp));
        assert_eq!(endpoint("/messages/"), Some(Endpoint::Messages));
        assert_eq!(endpoint("/sse"), Some(Endpoint::Sse));
        assert_eq!(endpoint("/admin"), None);
    }

    #[test]
    fn origins() {
        let allowed = vec![
            "http://localhost:*".to_string(),
            "https://app.example.com".to_string(),
        ];
        assert!(origin_allowed("http://localhost:3000", &allowed));
        assert!(origin_allowed("http://localhost", &allowed));
        assert!(origin_allowed("HTTPS://APP.example.com", &allowed));
        assert!(!origin_allowed("http://localhost.evil.com", &allowed));
        assert!(!origin_allowed("http://localhost:3000@evil", &allowed));
        assert!(!origin_allowed("https://evil.example", &allowed));
        assert!(origin_allowed("https://anything", &["*".to_string()]));
    }

    #[test]
    fn endpoints_take_their_methods() {
        use http::Method as M;
        let sse = Some("text/event-stream");
        assert!(check_method(Endpoint::Mcp, &M::POST, None, false).is_ok());
        assert!(check_method(Endpoint::Mcp, &M::GET, sse, true).is_ok());
        assert_eq!(
            check_method(Endpoint::Mcp, &M::GET, Some("application/json"), true)
                .unwrap_err()
                .status(),
            406
        );
        assert_eq!(
            check_method(Endpoint::Mcp, &M::GET, sse, false)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            check_method(Endpoint::Mcp, &M::DELETE, None, false)
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            check_method(Endpoint::Mcp, &M::PUT, None, true)
                .unwrap_err()
                .allow(),
            Some("GET, POST, DELETE")
        );
        assert_eq!(
            check_method(Endpoint::Sse, &M::POST, sse, false)
                .unwrap_err()
                .status(),
            405
        );
        assert_eq!(
            check_method(Endpoint::Messages, &M::GET, None, false)
                .unwrap_err()
                .allow(),
            Some("POST")
        );
        assert!(check_origin(None, &[]).is_ok());
        assert_eq!(check_origin(Some("https://evil"), &[]), Err(Reject::Origin));
    }

    #[test]
    fn accept_and_query() {
        assert!(accepts_event_stream(Some(
            "application/json, text/event-stream"
        )));
        assert!(accepts_event_stream(Some("text/event-stream;q=0.9")));
        assert!(!accepts_event_stream(Some("application/json")));
        assert!(!accepts_event_stream(None));
        assert_eq!(
            query_param(Some("a=1&sessionId=xyz"), &["sessionId", "session_id"]),
            Some("xyz")
        );
        assert_eq!(
            query_param(Some("session_id=abc"), &["sessionId", "session_id"]),
            Some("abc")
        );
        assert_eq!(query_param(None, &["sessionId"]), None);
        assert_eq!(percent_decode("127.0.0.1%3A8080"), "127.0.0.1:8080");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%é%"), "%é%");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..Default::default() })]

        /// Header and query text from clients: an answer, never a panic.
        #[test]
        fn edge_parsers_never_panic(text in "\\PC{0,200}", allowed in proptest::collection::vec("\\PC{0,40}", 0..4)) {
            let _ = origin_allowed(&text, &allowed);
            let _ = accepts_event_stream(Some(&text));
            let _ = query_param(Some(&text), &["sessionId", "session_id"]);
            let _ = percent_decode(&text);
            let _ = endpoint(&text);
            proptest::prop_assert!(origin_allowed(&text, &["*".to_string()]));
        }

        /// An Origin with another host never passes a host's port wildcard.
        #[test]
        fn port_wildcards_match_only_their_host(host in "[a-z]{1,12}", port in 0u32..70000, suffix in "[a-z.@:]{1,10}") {
            let allowed = vec![format!("http://{host}:*")];
            let same = format!("http://{host}:{port}");
            let other = format!("http://{host}{suffix}");
            proptest::prop_assert!(origin_allowed(&same, &allowed));
            let bare = format!("http://{}", host);
            proptest::prop_assert!(!origin_allowed(&other, &allowed) || other == bare);
        }
    }
}
