//! Argument rules shared by the tools. Every rejection names the field, so a
//! person or a model reading the error knows what to fix.

use thiserror::Error;

pub const MAX_ID_LEN: usize = 128;
pub const MAX_STRING_BYTES: usize = 4096;
pub const MAX_LIST_LEN: usize = 64;
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

#[derive(Debug, Error, PartialEq)]
#[error("Invalid argument '{field}': {reason}")]
pub struct InvalidArgument {
    pub field: &'static str,
    pub reason: String,
}

pub fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidArgument {
    InvalidArgument {
        field,
        reason: reason.into(),
    }
}

pub fn agent_id(field: &'static str, id: &str) -> Result<(), InvalidArgument> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(invalid(
            field,
            format!("must be at most {MAX_ID_LEN} characters"),
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(invalid(
            field,
            format!("character {bad:?} is not allowed (use A-Z a-z 0-9 . _ : -)"),
        ));
    }
    Ok(())
}

pub fn text(field: &'static str, value: &str) -> Result<(), InvalidArgument> {
    if value.len() > MAX_STRING_BYTES {
        return Err(invalid(
            field,
            format!("must be at most {MAX_STRING_BYTES} bytes"),
        ));
    }
    Ok(())
}

pub fn non_empty_text(field: &'static str, value: &str) -> Result<(), InvalidArgument> {
    if value.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    text(field, value)
}

pub fn url(field: &'static str, value: &str) -> Result<(), InvalidArgument> {
    text(field, value)?;
    let lower = value.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("https://")
        .or_else(|| lower.strip_prefix("http://"))
        .ok_or_else(|| invalid(field, "must be an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(invalid(field, "must name a host"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

pub fn list(field: &'static str, items: &[String]) -> Result<(), InvalidArgument> {
    if items.len() > MAX_LIST_LEN {
        return Err(invalid(
            field,
            format!("must have at most {MAX_LIST_LEN} entries"),
        ));
    }
    for item in items {
        if item.trim().is_empty() {
            return Err(invalid(field, "entries must not be empty"));
        }
        text(field, item)?;
    }
    Ok(())
}

pub fn limit(value: Option<i64>) -> Result<usize, InvalidArgument> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT as i64).contains(&n) => Ok(n as usize),
        Some(_) => Err(invalid(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_charset_and_length_rules() {
        assert!(agent_id("agent_id", "a.b_c:d-1").is_ok());
        assert_eq!(agent_id("agent_id", "").unwrap_err().field, "agent_id");
        assert!(agent_id("agent_id", &"x".repeat(129)).is_err());
        assert!(agent_id("agent_id", &"x".repeat(128)).is_ok());
        assert!(agent_id("agent_id", "a b").is_err());
        assert!(agent_id("agent_id", "a/b").is_err());
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(url("agent_url", "http://localhost:6000").is_ok());
        assert!(url("agent_url", "HTTPS://example.com/a2a").is_ok());
        assert!(url("agent_url", "ftp://example.com").is_err());
        assert!(url("agent_url", "http://").is_err());
        assert!(url("agent_url", "javascript:alert(1)").is_err());
        assert!(url("agent_url", "http://a b").is_err());
    }

    #[test]
    fn limits_default_and_bound() {
        assert_eq!(limit(None), Ok(100));
        assert_eq!(limit(Some(1000)), Ok(1000));
        assert!(limit(Some(0)).is_err());
        assert!(limit(Some(1001)).is_err());
    }

    #[test]
    fn lists_are_bounded() {
        let many: Vec<String> = (0..65).map(|i| i.to_string()).collect();
        assert!(list("capabilities", &many).is_err());
        assert!(list("capabilities", &many[..64]).is_ok());
        assert!(list("capabilities", &["".to_owned()]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// Any text: an answer naming the field, never a panic; what is
        /// accepted really keeps the rules.
        #[test]
        fn validators_never_panic_and_keep_their_rules(v in "\\PC{0,300}", n in proptest::prelude::any::<i64>()) {
            if agent_id("agent_id", &v).is_ok() {
                proptest::prop_assert!(!v.is_empty() && v.len() <= MAX_ID_LEN);
                proptest::prop_assert!(v.chars().all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c)));
            } else {
                proptest::prop_assert_eq!(agent_id("agent_id", &v).unwrap_err().field, "agent_id");
            }
            if url("agent_url", &v).is_ok() {
                let l = v.to_ascii_lowercase();
                proptest::prop_assert!(l.starts_with("http://") || l.starts_with("https://"));
                proptest::prop_assert!(!v.chars().any(char::is_whitespace));
            }
            let _ = (text("t", &v), non_empty_text("t", &v), list("l", std::slice::from_ref(&v)));
            match limit(Some(n)) {
                Ok(k) => proptest::prop_assert!((1..=MAX_LIMIT).contains(&k)),
                Err(e) => proptest::prop_assert_eq!(e.field, "limit"),
            }
        }
    }
}
