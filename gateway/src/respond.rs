//! What a refusal looks like to the client, in the two places it can go:
//! a whole HTTP response (nothing was written yet), or a JSON-RPC error
//! event in a stream already open. Both carry the same JSON-RPC error,
//! `data` included. `relay::refuse` is the one caller that writes them
//! (through the client's [`Sink`](crate::relay::Sink)), counting each
//! refusal once.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::value::RawValue;

use crate::policy::jsonrpc;
use crate::reject::Reject;

/// The JSON-RPC error answering request `id` (null when unknown).
pub fn error_message(reject: &Reject, id: Option<&RawValue>) -> Vec<u8> {
    jsonrpc::error_body_with(id, reject.code(), &reject.to_string(), reject.data())
}

/// The refusal as a whole response: its status, the JSON-RPC error, and
/// `Retry-After`, `Allow` and `WWW-Authenticate` where they apply.
/// `metadata_url` says where the protected-resource metadata is (asked
/// only for refusals about credentials).
pub fn response(
    reject: &Reject,
    id: Option<&RawValue>,
    metadata_url: impl FnOnce() -> String,
) -> Result<(ResponseHeader, Bytes), Box<pingora::Error>> {
    let body = error_message(reject, id);
    let mut head = ResponseHeader::build(reject.status(), Some(6))?;
    head.insert_header("content-type", "application/json")?;
    head.insert_header("cache-control", "no-store")?;
    if let Some(secs) = reject.retry_after() {
        head.insert_header("retry-after", secs.to_string())?;
    }
    if let Some(allow) = reject.allow() {
        head.insert_header("allow", allow)?;
    }
    if let Some(challenge) = challenge(reject, metadata_url) {
        head.insert_header("www-authenticate", challenge)?;
    }
    Ok((head, Bytes::from(body)))
}

/// The refusal as an event for a stream already open; `None` when nothing
/// there would read it (a notification's or a response's refusal).
pub fn event(reject: &Reject, id: Option<&RawValue>) -> Option<Bytes> {
    let id = id?;
    let body = error_message(reject, Some(id));
    Some(mcp_sse::format(
        Some("message"),
        None,
        &String::from_utf8_lossy(&body),
    ))
}

/// The `WWW-Authenticate` challenge of a refusal about credentials.
fn challenge(reject: &Reject, metadata_url: impl FnOnce() -> String) -> Option<String> {
    let scope = match reject {
        Reject::Unauthorized(why) => {
            let metadata = metadata_url();
            return Some(format!(
                r#"Bearer resource_metadata="{metadata}", error="invalid_token", error_description="{why}""#
            ));
        }
        Reject::Forbidden { scope } | Reject::ToolDenied { scope, .. } => scope,
        _ => return None,
    };
    let metadata = metadata_url();
    Some(match scope {
        Some(s) => {
            format!(
                r#"Bearer resource_metadata="{metadata}", error="insufficient_scope", scope="{s}""#
            )
        }
        None => format!(r#"Bearer resource_metadata="{metadata}", error="insufficient_scope""#),
    })
}

/// Whether a `Host` value is a plain authority (host and port, no quotes,
/// spaces or anything else that could end up in a header it is copied into).
pub fn is_authority(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// The request's own origin: the configured resource's scheme and
/// authority when there is one, else how the client reached the gateway (a
/// `Host` that is not a plain authority counts as `localhost`).
pub fn origin(session: &Session, resource: Option<&str>) -> String {
    if let Some(origin) = resource.and_then(|r| {
        let (scheme, rest) = r.split_once("://")?;
        let authority = rest.split('/').next()?;
        is_authority(authority).then(|| format!("{scheme}://{authority}"))
    }) {
        return origin;
    }
    let req = session.req_header();
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .filter(|h| is_authority(h))
        .unwrap_or("localhost");
    format!("{}://{host}", if tls { "https" } else { "http" })
}

/// Where this request's protected-resource metadata is (RFC 9728: the
/// well-known path, then the resource's own path).
pub fn resource_metadata_url(session: &Session, resource: Option<&str>) -> String {
    let path = session.req_header().uri.path();
    let suffix = ["/mcp", "/sse", "/messages", "/message"]
        .iter()
        .find_map(|e| path.strip_suffix(e))
        .unwrap_or("");
    let origin = origin(session, resource);
    format!("{origin}/.well-known/oauth-protected-resource{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_keeps_its_data_in_both_forms() {
        let limited = Reject::RateLimited {
            retry_after: 3,
            what: "requests per principal",
        };
        let id = RawValue::from_string("7".into()).unwrap();
        let (head, body) = response(&limited, Some(&id), String::new).unwrap();
        assert_eq!(head.status.as_u16(), 429);
        assert_eq!(head.headers["retry-after"], "3");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["data"]["retryAfterSeconds"], 3);
        assert_eq!(v["id"], 7);
        let ev = event(&limited, Some(&id)).unwrap();
        let text = String::from_utf8_lossy(&ev);
        assert!(text.starts_with("event: message\ndata: "), "{text}");
        assert!(text.contains("retryAfterSeconds"), "{text}");
        assert!(
            event(&limited, None).is_none(),
            "nothing answers a notification"
        );
    }

    #[test]
    fn only_plain_authorities_pass_as_hosts() {
        assert!(is_authority("gw.example.com:8443"));
        assert!(is_authority("[::1]:80"));
        assert!(!is_authority(r#"evil", error="x"#));
        assert!(!is_authority("a b"));
        assert!(!is_authority(""));
    }

    #[test]
    fn credential_refusals_carry_a_challenge() {
        let url = || "https://gw/.well-known/oauth-protected-resource".to_owned();
        let denied = Reject::ToolDenied {
            tool: "t".into(),
            scope: Some("w".into()),
        };
        let (head, _) = response(&denied, None, url).unwrap();
        let c = head.headers["www-authenticate"].to_str().unwrap();
        assert!(
            c.contains(r#"error="insufficient_scope", scope="w""#),
            "{c}"
        );
        let (head, _) = response(&Reject::NoBackend, None, url).unwrap();
        assert!(head.headers.get("www-authenticate").is_none());
    }
}
