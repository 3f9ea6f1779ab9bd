//! Binary HTTP messages (RFC 9292): the HTTP request and response a borrower and a lender exchange inside OHTTP.
//!
//! ## Where it sits
//! The borrower encodes the tool's request as a *known-length* request ([`encode_request`], framing indicator 0) and
//! seals it; the lender opens it and reads it with [`decode_request`]. The lender answers with an
//! *indeterminate-length* response (framing indicator 3) written piece by piece as its upstream's body arrives —
//! [`response_head`] once, [`response_chunk`] per piece, [`response_end`] last — and the borrower feeds the bytes it
//! decrypts, split however they come, to a [`ResponseDecoder`], which hands back [`ResponseEvent`]s. Pure: no I/O,
//! nothing async, no panic on any input (property-tested).
//!
//! ## The format (RFC 9292 §3)
//! Every integer is a QUIC variable-length integer (RFC 9000 §16: 1, 2, 4 or 8 bytes, chosen by the top two bits of
//! the first byte; non-minimal encodings are accepted, as RFC 9292 allows). A message is a framing indicator, control
//! data (method, scheme, authority, path; or a status code, after any informational 1xx responses with their header
//! sections), a header section, the content, a trailer section and zero padding. Known-length sections carry a length
//! prefix; an indeterminate-length field section ends with a zero, and indeterminate-length content is non-empty
//! chunks ended by a zero.
//!
//! ## What is checked
//! - Sizes before buffering: a field section against [`MAX_FIELD_SECTION`] (or [`DecodeLimits::max_field_section`]),
//!   a chunk and the whole body against their limits, each as soon as its length is read.
//! - Field names must be HTTP tokens (RFC 9110 §5.1), which also refuses the `:method`-style pseudo-fields; values
//!   must be ones HTTP/2 accepts (no NUL, CR or LF, no leading or trailing space or tab), as RFC 9292 §3.6 requires.
//!   Names are written lower-case; upper-case names are accepted on receipt.
//! - Padding after a message must be zero bytes (§3.8).
//! - A request's scheme and authority are read (within limits) and ignored: the lender calls its own upstream.
//!   Trailers are read, checked and ignored: [`HttpRequest`] has no place for them and responses don't carry them on.
//!
//! ## Truncation (§3.8)
//! An encoder may leave out empty parts at the end of a message. [`decode_request`] accepts a request that ends where
//! its header section, content or trailer section would begin (those parts are then empty): the request arrives whole
//! in one sealed envelope, so where it ends is what its sender wrote. [`ResponseDecoder`] is stricter on purpose: a
//! streamed response that stops after a chunk looks exactly like one cut in transit, so
//! [`ResponseDecoder::finish`] refuses any response whose trailer section has not ended; every response written here
//! ends with [`response_end`], and the `bhttp` crate writes complete messages too.
//!
//! ## Memory
//! [`ResponseDecoder`] keeps at most one partial integer (8 bytes) and one partial field section (bounded by its
//! limit). Content never waits in it: the bytes of a chunk go straight from the pushed slice into a
//! [`ResponseEvent::Chunk`] as they arrive, so a chunk may come out in several parts, and content bytes from one push
//! come out as one event even when they span chunks. Chunk boundaries carry no meaning (RFC 9292 §5.2).

use thiserror::Error;

use crate::wire::{HttpRequest, MAX_HTTP_MESSAGE};

/// Largest header (or trailer, or informational header) section accepted, and largest request control field (method,
/// scheme, authority, path): 64 KiB, the size HTTP servers commonly allow for a request's whole header block.
pub const MAX_FIELD_SECTION: usize = 64 * 1024;
/// Default largest single content chunk of a streamed response: 1 MiB. A chunk is one read from the lender's
/// upstream, normally a few KiB; the limit only refuses absurd lengths, since chunks are never buffered whole.
pub const DEFAULT_MAX_CHUNK: usize = 1024 * 1024;
/// Default largest response body: the borrow frame's limit for a whole HTTP message ([`MAX_HTTP_MESSAGE`], 8 MiB).
pub const DEFAULT_MAX_BODY: u64 = MAX_HTTP_MESSAGE as u64;

/// Framing indicator of a known-length request.
const KNOWN_REQUEST: u64 = 0;
/// Framing indicator of a known-length response.
const KNOWN_RESPONSE: u64 = 1;
/// Framing indicator of an indeterminate-length request.
const INDETERMINATE_REQUEST: u64 = 2;
/// Framing indicator of an indeterminate-length response.
const INDETERMINATE_RESPONSE: u64 = 3;
/// Largest value a QUIC variable-length integer holds.
const VARINT_MAX: u64 = (1 << 62) - 1;

/// Why bytes are not an acceptable Binary HTTP message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BhttpError {
    /// The message ended before it was complete (a cut stream, or a sender that stopped early).
    #[error("binary HTTP message truncated: it ended before it was complete")]
    Truncated,
    /// The framing indicator is not the kind of message expected here.
    #[error("unexpected binary HTTP framing indicator {got} (0 and 2 are requests, 1 and 3 responses)")]
    WrongFraming {
        /// The framing indicator found.
        got: u64,
    },
    /// A field section (or a request control field) is over its limit.
    #[error("binary HTTP field section over the {limit}-byte limit")]
    FieldSectionTooLarge {
        /// The limit.
        limit: usize,
    },
    /// A content chunk is over its limit.
    #[error("binary HTTP content chunk of {len} bytes over the {limit}-byte limit")]
    ChunkTooLarge {
        /// The chunk's announced length.
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// The content is over its limit.
    #[error("binary HTTP body over the {limit}-byte limit")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The bytes cannot be a Binary HTTP message (the text says which rule they break).
    #[error("malformed binary HTTP message: {0}")]
    Malformed(&'static str),
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------------------

/// Encodes a request as a known-length Binary HTTP request (framing indicator 0): scheme `https`, an empty
/// authority (the lender calls its own upstream), path `path_and_query`, the headers with lower-cased names, the body,
/// an empty trailer section and no padding.
///
/// Header names are expected to be non-empty HTTP tokens and values to have no NUL, CR or LF and no leading or
/// trailing whitespace (what an HTTP server hands over); [`decode_request`] refuses other ones.
#[must_use]
pub fn encode_request(req: &HttpRequest) -> Vec<u8> {
    let section = field_lines(&req.headers);
    let mut out =
        Vec::with_capacity(32 + req.method.len() + req.path_and_query.len() + section.len() + req.body.len());
    put_varint(&mut out, KNOWN_REQUEST);
    put_bytes(&mut out, req.method.as_bytes());
    put_bytes(&mut out, b"https");
    put_bytes(&mut out, b"");
    put_bytes(&mut out, req.path_and_query.as_bytes());
    put_bytes(&mut out, &section);
    put_bytes(&mut out, &req.body);
    put_varint(&mut out, 0); // empty trailer section
    out
}

/// The start of an indeterminate-length response (framing indicator 3): the final status and the header section,
/// names lower-cased, ended by its zero terminator. No informational responses are written.
///
/// `status` must be a final status, 200..=599 (map anything else from an upstream, e.g. to 502, before calling):
/// a decoder refuses other values or takes 1xx as informational. Header names and values as for [`encode_request`].
#[must_use]
pub fn response_head(status: u16, headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>());
    put_varint(&mut out, INDETERMINATE_RESPONSE);
    put_varint(&mut out, u64::from(status));
    out.extend_from_slice(&field_lines(headers));
    put_varint(&mut out, 0);
    out
}

/// One content chunk of a response begun with [`response_head`]: its length and the bytes. Empty `data` gives an
/// empty vector, since a zero length would end the content.
#[must_use]
pub fn response_chunk(data: &[u8]) -> Vec<u8> {
    if data.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(data.len() + 8);
    put_bytes(&mut out, data);
    out
}

/// The end of a response begun with [`response_head`]: the content terminator and an empty trailer section.
#[must_use]
pub fn response_end() -> Vec<u8> {
    vec![0, 0]
}

/// Field lines (name length, lower-cased name, value length, value) without any section framing.
fn field_lines(fields: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum());
    for (name, value) in fields {
        put_varint(&mut out, name.len() as u64);
        out.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
        put_bytes(&mut out, value);
    }
    out
}

/// Appends a length-prefixed byte string.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Appends `v` as a QUIC variable-length integer in its shortest form. Values over 2^62 - 1 cannot occur here
/// (lengths of vectors in memory, status codes); they would be clamped.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    let v = v.min(VARINT_MAX);
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&((v as u16) | 0x4000).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&((v as u32) | 0x8000_0000).to_be_bytes());
    } else {
        out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Shared decoding pieces
// ---------------------------------------------------------------------------------------------------------------

/// Known-length or indeterminate-length framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Known,
    Indeterminate,
}

/// Length in bytes of the variable-length integer that starts with `first`.
fn varint_len(first: u8) -> usize {
    1 << (first >> 6)
}

/// The value of a complete variable-length integer (`bytes.len()` is its length).
fn varint_value(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b)) & !(0b11 << (8 * bytes.len() - 2))
}

/// A variable-length integer read across pushes.
#[derive(Clone, Debug, Default)]
struct VarintReader {
    buf: [u8; 8],
    have: usize,
}

impl VarintReader {
    /// Reads from `input`: the value once complete, and how many bytes were used.
    fn feed(&mut self, input: &[u8]) -> (Option<u64>, usize) {
        for (used, &b) in input.iter().enumerate() {
            let need = varint_len(if self.have == 0 { b } else { self.buf[0] });
            self.buf[self.have] = b;
            self.have += 1;
            if self.have == need {
                self.have = 0;
                return (Some(varint_value(&self.buf[..need])), used + 1);
            }
        }
        (None, input.len())
    }

    /// Whether it holds part of an integer.
    fn is_partial(&self) -> bool {
        self.have > 0
    }
}

/// Whether `name` is a non-empty HTTP token (RFC 9110 §5.6.2).
fn is_token(name: &[u8]) -> bool {
    !name.is_empty()
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether HTTP/2 accepts `value` as a field value (RFC 9113 §8.2.1, required by RFC 9292 §3.6).
fn is_field_value(value: &[u8]) -> bool {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    !value.iter().any(|b| matches!(b, 0 | b'\r' | b'\n'))
        && !value.first().is_some_and(ws)
        && !value.last().is_some_and(ws)
}

/// Where a field-line reader is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldStep {
    NameLen,
    Name { need: usize },
    ValueLen,
    Value { need: usize },
    Done,
}

/// One field section read across pushes, bounded by its limit before anything is buffered.
#[derive(Debug)]
struct FieldSectionReader {
    limit: usize,
    /// Section bytes read so far, length prefixes included.
    read: usize,
    /// Known-length: section bytes still to come; indeterminate-length: `None`.
    known_left: Option<usize>,
    /// Keep the fields (header sections) or only check them (informational headers, trailers).
    keep: bool,
    step: FieldStep,
    varint: VarintReader,
    name: Vec<u8>,
    part: Vec<u8>,
    fields: Vec<(String, Vec<u8>)>,
}

impl FieldSectionReader {
    fn new(known_len: Option<u64>, limit: usize, keep: bool) -> Result<Self, BhttpError> {
        let known_left = match known_len {
            Some(len) if len > limit as u64 => return Err(BhttpError::FieldSectionTooLarge { limit }),
            Some(len) => Some(len as usize),
            None => None,
        };
        Ok(FieldSectionReader {
            limit,
            read: 0,
            known_left,
            keep,
            step: FieldStep::NameLen,
            varint: VarintReader::default(),
            name: Vec::new(),
            part: Vec::new(),
            fields: Vec::new(),
        })
    }

    fn is_done(&self) -> bool {
        self.step == FieldStep::Done
    }

    /// Reads from `input` until the section ends or the input runs out; returns the bytes used.
    fn feed(&mut self, input: &[u8]) -> Result<usize, BhttpError> {
        let mut pos = 0;
        loop {
            if self.step == FieldStep::Done {
                return Ok(pos);
            }
            let avail = self.window(input.get(pos..).unwrap_or_default());
            if avail.is_empty() {
                if self.known_left != Some(0) {
                    return Ok(pos); // wait for more input
                }
                // A known-length section ends exactly at a field line's end.
                if self.step == FieldStep::NameLen && !self.varint.is_partial() {
                    self.step = FieldStep::Done;
                    continue;
                }
                return Err(BhttpError::Malformed(
                    "field line overruns its known-length section",
                ));
            }
            let used = match self.step {
                FieldStep::NameLen | FieldStep::ValueLen => {
                    let (value, used) = self.varint.feed(avail);
                    self.consume(used)?;
                    if let Some(len) = value {
                        self.on_length(len)?;
                    }
                    used
                }
                FieldStep::Name { need } | FieldStep::Value { need } => {
                    let take = (need - self.part.len()).min(avail.len());
                    self.part.extend_from_slice(&avail[..take]);
                    self.consume(take)?;
                    if self.part.len() == need {
                        self.on_part_complete()?;
                    }
                    take
                }
                FieldStep::Done => 0,
            };
            pos += used;
        }
    }

    /// The part of `input` that belongs to this section.
    fn window<'a>(&self, input: &'a [u8]) -> &'a [u8] {
        match self.known_left {
            Some(left) => &input[..left.min(input.len())],
            None => input,
        }
    }

    fn consume(&mut self, n: usize) -> Result<(), BhttpError> {
        self.read += n;
        if let Some(left) = &mut self.known_left {
            *left -= n;
        }
        if self.read > self.limit {
            return Err(BhttpError::FieldSectionTooLarge { limit: self.limit });
        }
        Ok(())
    }

    /// A name or value length has been read: checks it against what the section may still hold.
    fn on_length(&mut self, len: u64) -> Result<(), BhttpError> {
        let room = match self.known_left {
            Some(left) => left,
            None => self.limit - self.read,
        };
        if len > room as u64 {
            return Err(match self.known_left {
                Some(_) => BhttpError::Malformed("field line overruns its known-length section"),
                None => BhttpError::FieldSectionTooLarge { limit: self.limit },
            });
        }
        let len = len as usize;
        self.step = match (self.step, len) {
            (FieldStep::NameLen, 0) if self.known_left.is_none() => FieldStep::Done, // the terminator
            (FieldStep::NameLen, 0) => return Err(BhttpError::Malformed("empty field name")),
            (FieldStep::NameLen, need) => FieldStep::Name { need },
            (_, 0) => {
                self.on_part_complete()?;
                return Ok(());
            }
            (_, need) => FieldStep::Value { need },
        };
        Ok(())
    }

    /// A name or value has been read in full.
    fn on_part_complete(&mut self) -> Result<(), BhttpError> {
        let mut part = std::mem::take(&mut self.part);
        if let FieldStep::Name { .. } = self.step {
            if !is_token(&part) {
                return Err(BhttpError::Malformed("field name is not an HTTP token"));
            }
            // Names are case-insensitive; everything after the decoder compares them lower-cased, as the encoder
            // writes them (a `Authorization` must not slip past a filter that looks for `authorization`).
            part.make_ascii_lowercase();
            self.name = part;
            self.step = FieldStep::ValueLen;
            return Ok(());
        }
        if !is_field_value(&part) {
            return Err(BhttpError::Malformed(
                "field value has NUL, CR, LF or surrounding whitespace",
            ));
        }
        let name = std::mem::take(&mut self.name);
        if self.keep {
            let name =
                String::from_utf8(name).map_err(|_| BhttpError::Malformed("field name is not ASCII"))?;
            self.fields.push((name, part));
        }
        self.step = FieldStep::NameLen;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Requests (whole messages)
// ---------------------------------------------------------------------------------------------------------------

/// Decodes a known-length (0) or indeterminate-length (2) Binary HTTP request, refusing responses, a body over
/// `max_body` bytes, a header section over [`MAX_FIELD_SECTION`] and non-zero bytes after the message (zero padding
/// is allowed). A message that ends where its header section, content or trailer section would begin has those parts
/// empty (RFC 9292 §3.8). Scheme, authority and trailers are read and ignored.
pub fn decode_request(bytes: &[u8], max_body: usize) -> Result<HttpRequest, BhttpError> {
    let mut r = SliceReader(bytes);
    let mode = match r.varint()?.ok_or(BhttpError::Truncated)? {
        KNOWN_REQUEST => Mode::Known,
        INDETERMINATE_REQUEST => Mode::Indeterminate,
        got => return Err(BhttpError::WrongFraming { got }),
    };
    let method = r.control_field()?;
    let _scheme = r.control_field()?;
    let _authority = r.control_field()?;
    let path = r.control_field()?;
    if !is_token(method) {
        return Err(BhttpError::Malformed("method is not an HTTP token"));
    }
    let method =
        String::from_utf8(method.to_vec()).map_err(|_| BhttpError::Malformed("method is not ASCII"))?;
    let path_and_query =
        String::from_utf8(path.to_vec()).map_err(|_| BhttpError::Malformed("path is not UTF-8"))?;
    let headers = r.field_section(mode, true)?;
    let body = r.content(mode, max_body)?;
    r.field_section(mode, false)?; // trailers
    if r.0.iter().any(|b| *b != 0) {
        return Err(BhttpError::Malformed("non-zero bytes after the message"));
    }
    Ok(HttpRequest {
        method,
        path_and_query,
        headers,
        body,
    })
}

/// A cursor over a whole message.
struct SliceReader<'a>(&'a [u8]);

impl<'a> SliceReader<'a> {
    /// A variable-length integer; `None` at the end of the input.
    fn varint(&mut self) -> Result<Option<u64>, BhttpError> {
        let Some(&first) = self.0.first() else {
            return Ok(None);
        };
        let bytes = self.take(varint_len(first))?;
        Ok(Some(varint_value(bytes)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BhttpError> {
        if n > self.0.len() {
            return Err(BhttpError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A length-prefixed request control field, at most [`MAX_FIELD_SECTION`] bytes.
    fn control_field(&mut self) -> Result<&'a [u8], BhttpError> {
        let len = self.varint()?.ok_or(BhttpError::Truncated)?;
        if len > MAX_FIELD_SECTION as u64 {
            return Err(BhttpError::FieldSectionTooLarge {
                limit: MAX_FIELD_SECTION,
            });
        }
        self.take(len as usize)
    }

    /// A field section; empty when the message ends where it would begin.
    fn field_section(&mut self, mode: Mode, keep: bool) -> Result<Vec<(String, Vec<u8>)>, BhttpError> {
        if self.0.is_empty() {
            return Ok(Vec::new());
        }
        let (mut reader, bytes) = match mode {
            Mode::Known => {
                let len = self.varint()?.ok_or(BhttpError::Truncated)?;
                let reader = FieldSectionReader::new(Some(len), MAX_FIELD_SECTION, keep)?;
                (reader, self.take(len as usize)?)
            }
            Mode::Indeterminate => (FieldSectionReader::new(None, MAX_FIELD_SECTION, keep)?, self.0),
        };
        let used = reader.feed(bytes)?;
        if !reader.is_done() {
            return Err(BhttpError::Truncated);
        }
        if mode == Mode::Indeterminate {
            self.take(used)?;
        }
        Ok(reader.fields)
    }

    /// The content, at most `max_body` bytes; empty when the message ends where it would begin.
    fn content(&mut self, mode: Mode, max_body: usize) -> Result<Vec<u8>, BhttpError> {
        let too_large = BhttpError::BodyTooLarge {
            limit: max_body as u64,
        };
        let mut body = Vec::new();
        loop {
            let Some(len) = self.varint()? else {
                // Empty content may be left out; chunks without their terminator may not.
                return if body.is_empty() {
                    Ok(body)
                } else {
                    Err(BhttpError::Truncated)
                };
            };
            if len == 0 && mode == Mode::Indeterminate {
                return Ok(body);
            }
            if len > (max_body - body.len()) as u64 {
                return Err(too_large);
            }
            body.extend_from_slice(self.take(len as usize)?);
            if mode == Mode::Known {
                return Ok(body);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Responses (streamed)
// ---------------------------------------------------------------------------------------------------------------

/// Limits a [`ResponseDecoder`] enforces before it buffers anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest field section (each informational header section, the header section, the trailer section).
    pub max_field_section: usize,
    /// Largest single chunk of indeterminate-length content (known-length content counts only towards `max_body`).
    pub max_chunk: usize,
    /// Largest content in all.
    pub max_body: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_field_section: MAX_FIELD_SECTION,
            max_chunk: DEFAULT_MAX_CHUNK,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

/// What a [`ResponseDecoder`] has read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResponseEvent {
    /// The final status and header section (informational responses before it are skipped).
    Head {
        /// The status, 200..=599.
        status: u16,
        /// Header fields in order, names lower-cased.
        headers: Vec<(String, Vec<u8>)>,
    },
    /// Content bytes, never empty: whatever arrived of the content in one push (part of a chunk, or several).
    Chunk(Vec<u8>),
    /// The message is complete (trailers read and ignored); only zero padding may follow.
    End,
}

/// Which field section a response is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Informational,
    Header,
    Trailer,
}

/// Where a [`ResponseDecoder`] is.
#[derive(Debug)]
enum State {
    Framing,
    Status,
    /// Before a field section (a known-length one starts with its length).
    SectionStart(Section),
    Fields(Section, Box<FieldSectionReader>),
    /// Before the content's length (known-length) or a chunk's length (indeterminate-length).
    ContentLen,
    /// Inside the content (known-length) or a chunk: bytes still to come.
    Content {
        left: u64,
    },
    /// After the trailer section: only zero padding.
    Padding,
}

/// Decodes a Binary HTTP response (indeterminate-length or known-length) from bytes pushed as they arrive, in any
/// split. See the module docs for what it buffers and why it is strict about truncation.
///
/// After an error the decoder is spent: every later call returns the same error.
#[derive(Debug)]
pub struct ResponseDecoder {
    limits: DecodeLimits,
    mode: Mode,
    state: State,
    varint: VarintReader,
    status: u16,
    body_read: u64,
    failed: Option<BhttpError>,
}

impl ResponseDecoder {
    /// A decoder that expects the start of a response.
    #[must_use]
    pub fn new(limits: DecodeLimits) -> Self {
        ResponseDecoder {
            limits,
            mode: Mode::Indeterminate,
            state: State::Framing,
            varint: VarintReader::default(),
            status: 0,
            body_read: 0,
            failed: None,
        }
    }

    /// Reads the next bytes of the message; returns the events they completed (possibly none).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<ResponseEvent>, BhttpError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let mut events = Vec::new();
        match self.run(bytes, &mut events) {
            Ok(()) => Ok(events),
            Err(err) => {
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    /// At the end of the input: `Ok` only if the whole message (up to its trailer section's end) was read.
    pub fn finish(&self) -> Result<(), BhttpError> {
        match (&self.failed, &self.state) {
            (Some(err), _) => Err(err.clone()),
            (None, State::Padding) => Ok(()),
            (None, _) => Err(BhttpError::Truncated),
        }
    }

    /// Whether [`ResponseEvent::End`] has been returned.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.failed.is_none() && matches!(self.state, State::Padding)
    }

    fn run(&mut self, input: &[u8], events: &mut Vec<ResponseEvent>) -> Result<(), BhttpError> {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match &mut self.state {
                State::Framing | State::Status | State::ContentLen => {
                    let (value, used) = self.varint.feed(rest);
                    pos += used;
                    match value {
                        Some(value) => self.on_integer(value)?,
                        None => return Ok(()),
                    }
                }
                State::SectionStart(section) => {
                    let section = *section;
                    let known_len = match self.mode {
                        Mode::Indeterminate => None,
                        Mode::Known => {
                            let (value, used) = self.varint.feed(rest);
                            pos += used;
                            match value {
                                Some(len) => Some(len),
                                None => return Ok(()),
                            }
                        }
                    };
                    let keep = section == Section::Header;
                    let reader = FieldSectionReader::new(known_len, self.limits.max_field_section, keep)?;
                    self.state = State::Fields(section, Box::new(reader));
                }
                State::Fields(section, reader) => {
                    pos += reader.feed(rest)?;
                    if !reader.is_done() {
                        return Ok(());
                    }
                    let section = *section;
                    let fields = std::mem::take(&mut reader.fields);
                    self.on_section_end(section, fields, events);
                }
                State::Content { left } => {
                    if rest.is_empty() {
                        return Ok(());
                    }
                    let take = (*left).min(rest.len() as u64) as usize;
                    let data = &rest[..take];
                    match events.last_mut() {
                        Some(ResponseEvent::Chunk(prev)) => prev.extend_from_slice(data),
                        _ => events.push(ResponseEvent::Chunk(data.to_vec())),
                    }
                    *left -= take as u64;
                    pos += take;
                    if *left == 0 {
                        self.state = match self.mode {
                            Mode::Known => State::SectionStart(Section::Trailer),
                            Mode::Indeterminate => State::ContentLen,
                        };
                    }
                }
                State::Padding => {
                    if rest.iter().any(|b| *b != 0) {
                        return Err(BhttpError::Malformed("non-zero bytes after the message"));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// A framing indicator, status or content length has been read.
    fn on_integer(&mut self, value: u64) -> Result<(), BhttpError> {
        self.state = match self.state {
            State::Framing => {
                self.mode = match value {
                    KNOWN_RESPONSE => Mode::Known,
                    INDETERMINATE_RESPONSE => Mode::Indeterminate,
                    got => return Err(BhttpError::WrongFraming { got }),
                };
                State::Status
            }
            State::Status => match value {
                100..=199 => State::SectionStart(Section::Informational),
                200..=599 => {
                    self.status = value as u16;
                    State::SectionStart(Section::Header)
                }
                _ => return Err(BhttpError::Malformed("status code outside 100..=599")),
            },
            _ => self.on_content_len(value)?,
        };
        Ok(())
    }

    /// The content's length (known-length) or a chunk's (indeterminate-length) has been read.
    fn on_content_len(&mut self, len: u64) -> Result<State, BhttpError> {
        if len == 0 {
            return Ok(State::SectionStart(Section::Trailer));
        }
        if self.mode == Mode::Indeterminate && len > self.limits.max_chunk as u64 {
            return Err(BhttpError::ChunkTooLarge {
                len,
                limit: self.limits.max_chunk,
            });
        }
        if len > self.limits.max_body.saturating_sub(self.body_read) {
            return Err(BhttpError::BodyTooLarge {
                limit: self.limits.max_body,
            });
        }
        self.body_read += len;
        Ok(State::Content { left: len })
    }

    fn on_section_end(
        &mut self,
        section: Section,
        fields: Vec<(String, Vec<u8>)>,
        events: &mut Vec<ResponseEvent>,
    ) {
        self.state = match section {
            Section::Informational => State::Status,
            Section::Header => {
                events.push(ResponseEvent::Head {
                    status: self.status,
                    headers: fields,
                });
                State::ContentLen
            }
            Section::Trailer => {
                events.push(ResponseEvent::End);
                State::Padding
            }
        };
    }
}

#[cfg(test)]
mod tests;
