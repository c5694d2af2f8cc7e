//! Server-Sent Events framing (the WHATWG `text/event-stream` format), the
//! one SSE codec of the workspace: the gateway splits backend streams with
//! it, the client reads legacy SSE streams with it.
//!
//! [`Splitter`] cuts a byte stream into whole events without copying them:
//! each [`Event`] keeps the exact bytes the server sent (so a proxy can
//! forward them untouched) and parses its fields only when asked. Lines may
//! end in LF, CRLF or a lone CR, as the format allows. An event that grows
//! past the splitter's bound is an error, so a garbage peer costs at most
//! that much memory, and scanning is linear: every byte is looked at once.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// A comment line; clients ignore it, proxies and idle timers see traffic.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Why a stream could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("an SSE event grew past {0} bytes")]
    EventTooLarge(usize),
}

/// One complete event: the raw bytes up to and including its blank line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    raw: Bytes,
}

impl Event {
    /// The bytes exactly as received, blank line included.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub fn into_raw(self) -> Bytes {
        self.raw
    }

    /// `(field, value)` pairs in order; comment lines are skipped, and a
    /// line without a colon is a field with an empty value (as the format says).
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.raw
            .split(|b| *b == b'\n' || *b == b'\r')
            .filter(|line| !line.is_empty() && line[0] != b':')
            .map(|line| match line.iter().position(|b| *b == b':') {
                Some(i) => {
                    let value = &line[i + 1..];
                    (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &line[line.len()..]),
            })
    }

    /// The `event:` type, if any (none means "message").
    pub fn event_type(&self) -> Option<Cow<'_, str>> {
        self.last_field(b"event")
    }

    /// The `id:` field, if any.
    pub fn id(&self) -> Option<Cow<'_, str>> {
        self.last_field(b"id")
    }

    fn last_field(&self, name: &[u8]) -> Option<Cow<'_, str>> {
        self.fields()
            .filter(|(n, _)| *n == name)
            .last()
            .map(|(_, v)| String::from_utf8_lossy(v))
    }

    /// The `data:` lines joined with LF; `None` when the event has none
    /// (comments, a bare `id:` or `retry:`).
    pub fn data(&self) -> Option<Cow<'_, str>> {
        let mut lines = self.fields().filter(|(n, _)| *n == b"data").map(|(_, v)| v);
        let first = lines.next()?;
        match lines.next() {
            None => Some(String::from_utf8_lossy(first)),
            Some(second) => {
                let mut joined = Vec::with_capacity(first.len() + second.len() + 1);
                joined.extend_from_slice(first);
                joined.push(b'\n');
                joined.extend_from_slice(second);
                for more in lines {
                    joined.push(b'\n');
                    joined.extend_from_slice(more);
                }
                Some(Cow::Owned(String::from_utf8_lossy(&joined).into_owned()))
            }
        }
    }

    /// An event with only comments (keep-alives) and no fields.
    pub fn is_comment_only(&self) -> bool {
        self.fields().next().is_none()
    }

    /// The message the event carries: its data, unless it has none or only
    /// whitespace (a priming event carries only an `id:`, a keep-alive only
    /// a comment). Whatever its `event:` type, data is a message.
    pub fn message(&self) -> Option<Cow<'_, str>> {
        self.data().filter(|d| !d.trim().is_empty())
    }
}

/// The messages of a whole event-stream body (see [`Event::message`]); a
/// last event without its closing blank line still counts. Events past
/// `max_event` bytes end the reading.
pub fn messages(body: &[u8], max_event: usize) -> Vec<String> {
    let mut splitter = Splitter::new(max_event);
    let mut events = Vec::new();
    if splitter.push_into(body, &mut events).is_ok() {
        let _ = splitter.push_into(b"\n\n", &mut events);
    }
    events
        .iter()
        .filter_map(|e| e.message().map(Cow::into_owned))
        .collect()
}

/// Cuts a byte stream into [`Event`]s. A CR at the very end of the bytes
/// seen so far is held until the next byte shows whether it starts a CRLF.
#[derive(Debug)]
pub struct Splitter {
    buf: BytesMut,
    /// Bytes of `buf` already scanned for line ends.
    scanned: usize,
    /// Where the line being scanned starts.
    line_start: usize,
    max_event: usize,
    first: bool,
}

impl Splitter {
    /// A splitter that refuses events over `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            line_start: 0,
            max_event,
            first: true,
        }
    }

    /// Bytes held for an event not yet complete.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes the bytes held for an event not yet complete (to be fed
    /// again, elsewhere, from the start of that event).
    pub fn take_pending(&mut self) -> bytes::Bytes {
        self.scanned = 0;
        self.line_start = 0;
        self.buf.split().freeze()
    }

    /// Feeds bytes; returns the events they complete, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, SseError> {
        let mut events = Vec::new();
        self.push_into(chunk, &mut events)?;
        Ok(events)
    }

    /// As [`Splitter::push`], appending to `out` (no allocation when none completes).
    pub fn push_into(&mut self, mut chunk: &[u8], out: &mut Vec<Event>) -> Result<(), SseError> {
        if self.first && !chunk.is_empty() {
            // A UTF-8 byte order mark may open the stream; it is not part of an event.
            const BOM: &[u8] = b"\xEF\xBB\xBF";
            let have = self.buf.len() + chunk.len();
            if have < BOM.len() && BOM.starts_with(&[&self.buf[..], chunk].concat()) {
                self.buf.extend_from_slice(chunk);
                return Ok(());
            }
            self.first = false;
            let mut joined = std::mem::take(&mut self.buf);
            if !joined.is_empty() {
                joined.extend_from_slice(chunk);
                let skip = if joined.starts_with(BOM) {
                    BOM.len()
                } else {
                    0
                };
                let rest = joined.split_off(skip);
                return self.push_into(&rest, out);
            }
            if chunk.starts_with(BOM) {
                chunk = &chunk[BOM.len()..];
            }
        }
        self.buf.extend_from_slice(chunk);
        let mut i = self.scanned;
        while let Some(off) = self.buf[i..]
            .iter()
            .position(|b| *b == b'\n' || *b == b'\r')
        {
            let at = i + off;
            let term = if self.buf[at] == b'\r' {
                match self.buf.get(at + 1) {
                    // A CR at the end: wait to see whether an LF follows it.
                    None => {
                        i = at;
                        break;
                    }
                    Some(b'\n') => 2,
                    Some(_) => 1,
                }
            } else {
                1
            };
            let blank = at == self.line_start;
            i = at + term;
            self.line_start = i;
            if blank {
                // A blank line ends the event.
                let raw = self.buf.split_to(i).freeze();
                i = 0;
                self.line_start = 0;
                if raw.iter().all(|b| *b == b'\n' || *b == b'\r') {
                    continue; // stray blank lines between events
                }
                out.push(Event { raw });
            }
        }
        if i < self.buf.len() && !matches!(self.buf.get(i), Some(b'\r')) {
            i = self.buf.len();
        }
        self.scanned = i;
        if self.buf.len() > self.max_event {
            return Err(SseError::EventTooLarge(self.max_event));
        }
        Ok(())
    }
}

/// Formats one event; multi-line data becomes several `data:` lines.
pub fn format(event: Option<&str>, id: Option<&str>, data: &str) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + 32);
    if let Some(event) = event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(event.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn datas(events: &[Event]) -> Vec<Option<String>> {
        events
            .iter()
            .map(|e| e.data().map(|d| d.into_owned()))
            .collect()
    }

    #[test]
    fn splits_events_across_chunks_keeping_raw_bytes() {
        let mut s = Splitter::new(1024);
        assert!(s.push(b"id: 1\nretry: 3000\ndata:\n\n").unwrap().len() == 1);
        assert!(s.push(b"event: message\ndata: {\"a\":").unwrap().is_empty());
        let evs = s
            .push(b"1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n")
            .unwrap();
        assert_eq!(evs.len(), 3);
        assert_eq!(
            &evs[0].raw()[..],
            b"event: message\ndata: {\"a\":1}\r\n\r\n"
        );
        assert_eq!(evs[0].event_type().as_deref(), Some("message"));
        assert_eq!(evs[0].data().as_deref(), Some("{\"a\":1}"));
        assert!(evs[1].is_comment_only());
        assert_eq!(evs[2].data().as_deref(), Some("x\ny"));
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn lone_cr_ends_lines_and_crlf_split_across_chunks_is_one_line_end() {
        let mut s = Splitter::new(1024);
        // A trailing CR may be the first half of a CRLF: the event waits for the next byte.
        assert!(s.push(b"data: a\r\r").unwrap().is_empty());
        let evs = s.push(b"data: b\r").unwrap();
        assert_eq!(datas(&evs), vec![Some("a".into())]);
        assert_eq!(&evs[0].raw()[..], b"data: a\r\r");
        assert!(s.push(b"\n").unwrap().is_empty(), "CRLF is one line end");
        let evs = s.push(b"\r\n").unwrap();
        assert_eq!(datas(&evs), vec![Some("b".into())]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn fields_follow_the_format_rules() {
        let mut s = Splitter::new(1024);
        let ev = s
            .push(b"id: 7\nunknown: x\ndata\nevent:ping\n\n")
            .unwrap()
            .remove(0);
        assert_eq!(ev.id().as_deref(), Some("7"));
        assert_eq!(ev.event_type().as_deref(), Some("ping"));
        assert_eq!(
            ev.data().as_deref(),
            Some(""),
            "a bare 'data' line is empty data"
        );
    }

    #[test]
    fn skips_a_leading_byte_order_mark_even_when_split() {
        let mut s = Splitter::new(1024);
        assert!(s.push(b"\xEF\xBB").unwrap().is_empty());
        let evs = s.push(b"\xBFdata: x\n\n").unwrap();
        assert_eq!(datas(&evs), vec![Some("x".into())]);
    }

    #[test]
    fn refuses_a_runaway_event() {
        let mut s = Splitter::new(100);
        assert_eq!(s.push(&[b'a'; 101]), Err(SseError::EventTooLarge(100)));
        let mut s = Splitter::new(100);
        assert!(s.push(&[b'a'; 60]).is_ok());
        assert!(s.push(&[b'a'; 60]).is_err(), "the bound spans chunks");
    }

    #[test]
    fn messages_are_non_blank_data_of_any_event_type() {
        let body = b"id: 1\ndata:\n\n: ping\n\nevent: custom\ndata: {\"a\":1}\n\ndata: {\"b\":2}";
        assert_eq!(messages(body, 1024), vec!["{\"a\":1}", "{\"b\":2}"]);
        assert!(messages(&[b'x'; 100], 10).is_empty(), "over the bound");
    }

    #[test]
    fn formats_multiline_data() {
        assert_eq!(
            &format(Some("message"), None, "a\nb")[..],
            b"event: message\ndata: a\ndata: b\n\n"
        );
        assert_eq!(&format(None, Some("3"), "x")[..], b"id: 3\ndata: x\n\n");
    }

    fn chunked(input: &[u8], cuts: &[usize]) -> Result<Vec<Event>, SseError> {
        let mut s = Splitter::new(1 << 20);
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts {
            let c = c.min(input.len()).max(at);
            s.push_into(&input[at..c], &mut out)?;
            at = c;
        }
        s.push_into(&input[at..], &mut out)?;
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// However the bytes are cut into chunks, the same events come out.
        #[test]
        fn chunking_never_changes_the_events(
            input in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b':'), Just(b'd'), Just(b'a'), Just(b' '), any::<u8>()],
                0..300),
            mut cuts in proptest::collection::vec(0usize..300, 0..8),
        ) {
            cuts.sort_unstable();
            let whole = chunked(&input, &[]).unwrap();
            let pieces = chunked(&input, &cuts).unwrap();
            prop_assert_eq!(whole, pieces);
        }

        /// Formatted events split back into exactly their data.
        #[test]
        fn format_then_split_round_trips(datas in proptest::collection::vec("[^\r]{0,40}", 1..6)) {
            let mut wire = Vec::new();
            for d in &datas {
                wire.extend_from_slice(&format(Some("message"), None, d));
            }
            let events = Splitter::new(1 << 20).push(&wire).unwrap();
            let got: Vec<String> = events.iter().map(|e| e.data().unwrap().into_owned()).collect();
            prop_assert_eq!(got, datas);
        }

        /// Arbitrary bytes never panic and never hold more than the bound.
        #[test]
        fn arbitrary_input_is_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20)) {
            let mut s = Splitter::new(256);
            for c in &chunks {
                match s.push(c) {
                    Ok(evs) => {
                        prop_assert!(s.pending() <= 256);
                        for e in evs { let _ = (e.data(), e.id(), e.event_type()); }
                    }
                    Err(SseError::EventTooLarge(_)) => break,
                }
            }
        }
    }
}
