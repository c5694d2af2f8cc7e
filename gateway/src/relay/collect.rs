//! A sink that keeps what a backend answered for the gateway itself instead
//! of writing it to a client: a federation member's `initialize` result or
//! list, or the answer to a notification sent to every member.

use bytes::Bytes;
use http::HeaderMap;
use serde_json::value::RawValue;

use super::{Answer, Failure, MAX_EVENT, MAX_WHOLE_BODY, Seen, Sink};
use crate::reject::Reject;
use crate::upstream;

#[derive(Default)]
pub struct Collect {
    /// The answer to the request (or the reply the gateway made).
    pub answer: Option<String>,
    /// Why the exchange was refused, if it was.
    pub refused: Option<Reject>,
}

impl Sink for Collect {
    fn client_headers(&self) -> Option<&HeaderMap> {
        None
    }

    async fn relay(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        let Answer {
            parts,
            mut frames,
            mut pass,
            ..
        } = answer;
        let body = frames
            .read_all(MAX_WHOLE_BODY)
            .await
            .map_err(|_| Failure::BackendLost { open: false })?;
        for message in upstream::messages_of(&parts.headers, &body, MAX_EVENT) {
            if pass.see(&message) {
                self.answer = Some(message);
            }
        }
        if pass.awaits_answer() && self.answer.is_none() {
            if !parts.status.is_success() {
                return Err(Reject::BackendAnswer(parts.status.as_u16()).into());
            }
            return Err(Failure::BackendLost { open: false });
        }
        Ok(pass.seen)
    }

    async fn write_refusal(
        &mut self,
        reject: &Reject,
        _id: Option<&RawValue>,
    ) -> Result<(), Failure> {
        self.refused = Some(reject.clone());
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    async fn reply(
        &mut self,
        answer: Option<Bytes>,
        _session: Option<&str>,
    ) -> Result<(), Failure> {
        self.answer = answer.map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(())
    }
}
