//! Server→client requests (sampling, elicitation, roots, ping) and the
//! client's answers to them.
//!
//! A backend session numbers its own requests, so two backend sessions
//! behind one client session (before and after a failover) can both have a
//! request `0` outstanding. To route an answer only to the backend session
//! that asked, the gateway marks the id of every server request it relays
//! with a tag of the asking backend session: `0` becomes
//! `"mcpgw:1a2b3c4d:0"`, `"x"` becomes `"mcpgw:1a2b3c4d:\"x\""`. JSON-RPC
//! clients echo ids verbatim, so the answer comes back marked; the gateway
//! restores the original id and sends it on only if the session still lives
//! on the backend session that asked. Otherwise the answer is refused: it
//! would reach a backend session that never asked, or one that asked
//! something else under the same number.
//!
//! No table: the mark carries all that is needed, so nothing here grows.

use std::hash::{Hash, Hasher};

use bytes::Bytes;
use serde_json::Value;

const PREFIX: &str = "mcpgw:";

/// Names one backend session (backend identity and its session id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag(u32);

impl Tag {
    /// The tag of `session` on the backend `backend` (its stable identity,
    /// so a restarted backend that reuses session ids is another tag only
    /// if its identity changed; its sessions were lost either way).
    pub fn of(backend: &str, session: &str) -> Tag {
        // SipHash with fixed keys: stable across replicas of one build.
        let mut h = std::hash::DefaultHasher::new();
        backend.hash(&mut h);
        session.hash(&mut h);
        Tag(h.finish() as u32)
    }
}

/// The message with its id marked, when `data` is a server request (a
/// message with both `method` and `id`), or the server cancelling one of
/// its requests (`notifications/cancelled`, whose `requestId` is marked the
/// same way, so the client matches it); `None` for anything else, which
/// goes out as it came. Cheap for the common case: responses and other
/// notifications are told apart without parsing.
pub fn mark(data: &str, tag: Tag) -> Option<String> {
    let cancel = data.contains("notifications/cancelled");
    if !(cancel || data.contains("\"method\"") && data.contains("\"id\"")) {
        return None;
    }
    let mut msg: Value = serde_json::from_str(data).ok()?;
    let obj = msg.as_object_mut()?;
    let method = obj.get("method")?.as_str()?;
    let id = if method == "notifications/cancelled" {
        obj.get_mut("params")?.get_mut("requestId")?
    } else {
        obj.get_mut("id")?
    };
    if !(id.is_number() || id.is_string()) {
        return None;
    }
    *id = Value::String(format!("{PREFIX}{:08x}:{id}", tag.0));
    serde_json::to_string(&msg).ok()
}

/// What a client's answer (a POST holding only responses) says about the
/// server request it answers.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// No id the gateway marked: sent on as it is (the backend decides).
    Unmarked,
    /// Marked by `tag`; `body` is the answer with the backend's own ids back.
    Marked { tag: Tag, body: Bytes },
    /// Answers marked by different backend sessions in one batch.
    Mixed,
}

/// Reads the marks of a client's answer and restores the original ids.
pub fn unmark(body: &[u8]) -> Answer {
    if !body.windows(PREFIX.len()).any(|w| w == PREFIX.as_bytes()) {
        return Answer::Unmarked;
    }
    let Ok(mut msg) = serde_json::from_slice::<Value>(body) else {
        return Answer::Unmarked;
    };
    let mut found: Option<Tag> = None;
    let mut mixed = false;
    let mut restore = |one: &mut Value| {
        let Some(id) = one.get_mut("id") else { return };
        let Some((tag, original)) = id.as_str().and_then(split) else {
            return;
        };
        match found {
            Some(t) if t != tag => mixed = true,
            _ => found = Some(tag),
        }
        *id = original;
    };
    match &mut msg {
        Value::Array(all) => all.iter_mut().for_each(&mut restore),
        one => restore(one),
    }
    match (found, mixed) {
        (_, true) => Answer::Mixed,
        (None, _) => Answer::Unmarked,
        (Some(tag), false) => match serde_json::to_vec(&msg) {
            Ok(v) => Answer::Marked {
                tag,
                body: Bytes::from(v),
            },
            Err(_) => Answer::Unmarked,
        },
    }
}

/// A marked id's tag and original id.
fn split(id: &str) -> Option<(Tag, Value)> {
    let rest = id.strip_prefix(PREFIX)?;
    let (hex, original) = rest.split_once(':')?;
    if hex.len() != 8 {
        return None;
    }
    let tag = u32::from_str_radix(hex, 16).ok()?;
    let original: Value = serde_json::from_str(original).ok()?;
    matches!(original, Value::Number(_) | Value::String(_)).then_some((Tag(tag), original))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answer_to(marked: &str) -> String {
        let m: Value = serde_json::from_str(marked).unwrap();
        serde_json::json!({"jsonrpc": "2.0", "id": m["id"], "result": {}}).to_string()
    }

    #[test]
    fn a_server_request_id_is_marked_and_its_answer_restored() {
        let tag = Tag::of("b1", "s1");
        let req = r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{}}"#;
        let marked = mark(req, tag).unwrap();
        assert!(marked.contains("\"mcpgw:"), "{marked}");
        match unmark(answer_to(&marked).as_bytes()) {
            Answer::Marked { tag: t, body } => {
                assert_eq!(t, tag);
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["id"], serde_json::json!(7));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn string_ids_come_back_as_strings() {
        let tag = Tag::of("b1", "s1");
        let req = r#"{"jsonrpc":"2.0","id":"7","method":"roots/list"}"#;
        let Answer::Marked { body, .. } = unmark(answer_to(&mark(req, tag).unwrap()).as_bytes())
        else {
            panic!("not marked");
        };
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], serde_json::json!("7"));
    }

    #[test]
    fn responses_and_notifications_are_not_marked() {
        let tag = Tag::of("b1", "s1");
        assert_eq!(
            mark(r#"{"jsonrpc":"2.0","id":1,"result":{"method":"x"}}"#, tag),
            None
        );
        assert_eq!(
            mark(
                r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"id":1}}"#,
                tag
            ),
            None
        );
        assert_eq!(
            mark(r#"{"jsonrpc":"2.0","method":"x","id":null}"#, tag),
            None
        );
    }

    #[test]
    fn a_server_cancel_names_the_marked_request() {
        let tag = Tag::of("b1", "s1");
        let req = mark(
            r#"{"jsonrpc":"2.0","id":4,"method":"sampling/createMessage"}"#,
            tag,
        )
        .unwrap();
        let cancel = mark(
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":4,"reason":"timeout"}}"#,
            tag,
        )
        .unwrap();
        let req: Value = serde_json::from_str(&req).unwrap();
        let cancel: Value = serde_json::from_str(&cancel).unwrap();
        assert_eq!(cancel["params"]["requestId"], req["id"]);
        assert_eq!(cancel["params"]["reason"], "timeout");
        assert!(cancel.get("id").is_none());
    }

    #[test]
    fn another_backend_session_has_another_tag() {
        assert_ne!(Tag::of("b1", "s1"), Tag::of("b2", "s1"));
        assert_ne!(Tag::of("b1", "s1"), Tag::of("b1", "s2"));
        assert_eq!(Tag::of("b1", "s1"), Tag::of("b1", "s1"));
    }

    #[test]
    fn a_batch_answering_two_backend_sessions_is_mixed() {
        let a = mark(
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            Tag::of("b1", "s1"),
        )
        .unwrap();
        let b = mark(
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            Tag::of("b2", "s1"),
        )
        .unwrap();
        let batch = format!("[{},{}]", answer_to(&a), answer_to(&b));
        assert_eq!(unmark(batch.as_bytes()), Answer::Mixed);
    }

    #[test]
    fn unmarked_and_forged_ids_pass_as_unmarked() {
        assert_eq!(
            unmark(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#),
            Answer::Unmarked
        );
        assert_eq!(
            unmark(br#"{"jsonrpc":"2.0","id":"mcpgw:zz:1","result":{}}"#),
            Answer::Unmarked
        );
        assert_eq!(
            unmark(br#"{"jsonrpc":"2.0","id":"mcpgw:0000000a:{}","result":{}}"#),
            Answer::Unmarked
        );
    }

    proptest! {
        #[test]
        fn any_id_survives_the_round_trip(n in any::<i64>(), s in ".{0,40}", use_str in any::<bool>()) {
            let id = if use_str { Value::String(s) } else { Value::from(n) };
            let req = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"elicitation/create"}).to_string();
            let tag = Tag::of("b", "s");
            let marked = mark(&req, tag).unwrap();
            match unmark(answer_to(&marked).as_bytes()) {
                Answer::Marked { tag: t, body } => {
                    prop_assert_eq!(t, tag);
                    let v: Value = serde_json::from_slice(&body).unwrap();
                    prop_assert_eq!(&v["id"], &id);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
