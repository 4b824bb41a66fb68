//! The websocket framing of RFC 6455, as much of it as a one-way feed needs:
//! the server's frames (text, ping, pong, close; unmasked, so one encoded
//! frame serves every socket) and a reader of the client's frames that
//! holds no buffer while idle.
//!
//! The reader keeps only the control frames' payloads (at most 125 bytes)
//! and counts past the bytes of data frames, which the feed ignores. It must
//! never grow with what a client sends.

use bytes::{BufMut, Bytes, BytesMut};

const FIN: u8 = 0x80;
const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
const MAX_CONTROL: usize = 125;

pub const CLOSE_NORMAL: u16 = 1000;
pub const CLOSE_AWAY: u16 = 1001;
pub const CLOSE_PROTOCOL: u16 = 1002;
pub const CLOSE_POLICY: u16 = 1008;
pub const CLOSE_TOO_BIG: u16 = 1009;
pub const CLOSE_ERROR: u16 = 1011;

/// A server text frame carrying `payload`.
pub fn text(payload: &[u8]) -> Bytes {
    frame(OP_TEXT, payload)
}

pub fn ping() -> Bytes {
    Bytes::from_static(&[FIN | OP_PING, 0])
}

/// The pong answering a ping that carried `payload` (at most 125 bytes).
pub fn pong(payload: &[u8]) -> Bytes {
    frame(OP_PONG, payload)
}

/// A close frame with `code` and a reason of at most 123 bytes.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    frame(OP_CLOSE, &payload)
}

/// The length of the header of a server frame `frame_len` bytes long.
pub fn header_len(frame_len: usize) -> usize {
    match frame_len {
        n if n < 2 + 126 => 2,
        n if n < 4 + 65_536 => 4,
        _ => 10,
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(10 + len);
    out.put_u8(FIN | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.put_u8(126);
        out.put_u16(short);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.put_slice(payload);
    out.freeze()
}

/// What a client sent that the session must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Ping(Vec<u8>),
    Pong,
    /// The close code the client gave, if any.
    Close(Option<u16>),
}

/// Why the client's stream cannot be read any further.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A message longer than the reader accepts (close 1009).
    TooBig,
    /// Not a websocket stream a client may send (close 1002).
    Protocol(&'static str),
}

/// Where the reader is in the client's stream.
#[derive(Default)]
pub struct Reader {
    /// The header read so far (at most 2 + 8 + 4 bytes).
    header: Vec<u8>,
    /// Set once a header is complete: the frame being read.
    frame: Option<Frame>,
    /// A data message has begun and not yet ended.
    in_message: bool,
    /// Bytes of the data message in progress, across its fragments.
    message_len: usize,
    max_message: usize,
}

struct Frame {
    opcode: u8,
    mask: [u8; 4],
    remaining: usize,
    /// A control frame's payload, unmasked; data frames are skipped.
    control: Vec<u8>,
}

impl Reader {
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            ..Self::default()
        }
    }

    /// Consumes `input` (all of it), reporting each control frame it
    /// completes to `on_frame`.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut on_frame: impl FnMut(ClientFrame),
    ) -> Result<(), ReadError> {
        // A frame whose header says "no payload" completes without input.
        while !input.is_empty() || self.frame.as_ref().is_some_and(|f| f.remaining == 0) {
            let Some(frame) = &mut self.frame else {
                let taken = self.read_header(input)?;
                input = &input[taken..];
                continue;
            };
            let take = frame.remaining.min(input.len());
            if frame.opcode >= OP_CLOSE {
                let offset = frame.control.len();
                let mask = frame.mask;
                frame.control.extend(
                    input[..take]
                        .iter()
                        .enumerate()
                        .map(|(i, byte)| byte ^ mask[(offset + i) % 4]),
                );
            }
            frame.remaining -= take;
            input = &input[take..];
            if frame.remaining == 0 {
                let done = self.frame.take().expect("a frame is being read");
                if let Some(event) = control_event(done)? {
                    on_frame(event);
                }
            }
        }
        Ok(())
    }

    /// Reads header bytes from `input`; returns how many it took.
    fn read_header(&mut self, input: &[u8]) -> Result<usize, ReadError> {
        for (taken, byte) in input.iter().enumerate() {
            self.header.push(*byte);
            if self.header.len() == 2 && self.header[1] & 0x80 == 0 {
                return Err(ReadError::Protocol("client frames must be masked"));
            }
            if self.header_needs() == Some(self.header.len()) {
                self.start_frame()?;
                return Ok(taken + 1);
            }
        }
        Ok(input.len())
    }

    /// The full length of the header being read, once its second byte is in.
    fn header_needs(&self) -> Option<usize> {
        let extended = match self.header.get(1)? & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        Some(2 + extended + 4)
    }

    fn start_frame(&mut self) -> Result<(), ReadError> {
        let header = std::mem::take(&mut self.header);
        let (first, second) = (header[0], header[1]);
        debug_assert!(second & 0x80 != 0, "checked when it was read");
        if first & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        let fin = first & FIN != 0;
        let opcode = first & 0x0F;
        let len = match second & 0x7F {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => u64::from_be_bytes(header[2..10].try_into().expect("8 bytes")),
            short => u64::from(short),
        };
        let len = usize::try_from(len).map_err(|_| ReadError::TooBig)?;
        match opcode {
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > MAX_CONTROL {
                    return Err(ReadError::Protocol("bad control frame"));
                }
            }
            OP_TEXT | OP_BINARY | OP_CONTINUATION => {
                let continues = opcode == OP_CONTINUATION;
                if continues != self.in_message {
                    return Err(ReadError::Protocol("bad fragmentation"));
                }
                self.message_len = if continues { self.message_len } else { 0 } + len;
                if self.message_len > self.max_message {
                    return Err(ReadError::TooBig);
                }
                self.in_message = !fin;
            }
            _ => return Err(ReadError::Protocol("unknown opcode")),
        }
        self.frame = Some(Frame {
            opcode,
            mask: header[header.len() - 4..].try_into().expect("4 bytes"),
            remaining: len,
            control: Vec::new(),
        });
        Ok(())
    }
}

/// What a completed frame means to the session.
fn control_event(frame: Frame) -> Result<Option<ClientFrame>, ReadError> {
    Ok(match frame.opcode {
        OP_PING => Some(ClientFrame::Ping(frame.control)),
        OP_PONG => Some(ClientFrame::Pong),
        OP_CLOSE => Some(ClientFrame::Close(match frame.control.len() {
            0 => None,
            1 => return Err(ReadError::Protocol("close payload of one byte")),
            _ => Some(u16::from_be_bytes([frame.control[0], frame.control[1]])),
        })),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame, masked with `mask`.
    fn client(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn read_all(reader: &mut Reader, input: &[u8]) -> Result<Vec<ClientFrame>, ReadError> {
        let mut events = Vec::new();
        reader.feed(input, |event| events.push(event))?;
        Ok(events)
    }

    #[test]
    fn server_frames_have_the_rfc_headers() {
        assert_eq!(&text(b"Hello")[..], b"\x81\x05Hello");
        assert_eq!(&ping()[..], [0x89, 0x00]);
        assert_eq!(&pong(b"lt")[..], b"\x8a\x02lt");
        assert_eq!(&close(1008, "slow")[..], b"\x88\x06\x03\xf0slow");
        let long = text(&[b'x'; 300]);
        assert_eq!(&long[..4], [0x81, 126, 0x01, 0x2c]);
        assert_eq!(header_len(long.len()), 4);
        assert_eq!(header_len(text(&[b'x'; 125]).len()), 2);
        assert_eq!(header_len(text(&[b'x'; 70_000]).len()), 10);
    }

    #[test]
    fn control_frames_are_read_across_any_split_and_data_is_skipped() {
        let mut stream = client(0x81, b"ignored text", [1, 2, 3, 4]);
        stream.extend(client(0x89, b"lt", [9, 8, 7, 6]));
        stream.extend(client(0x8A, b"", [0, 0, 0, 0]));
        stream.extend(client(0x88, &1000u16.to_be_bytes(), [5, 5, 5, 5]));
        let expected = vec![
            ClientFrame::Ping(b"lt".to_vec()),
            ClientFrame::Pong,
            ClientFrame::Close(Some(1000)),
        ];
        assert_eq!(read_all(&mut Reader::new(1024), &stream).unwrap(), expected);
        let mut reader = Reader::new(1024);
        let mut events = Vec::new();
        for byte in &stream {
            events.extend(read_all(&mut reader, std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(events, expected, "one byte at a time");
    }

    #[test]
    fn oversized_messages_and_broken_streams_are_refused() {
        let big = client(0x81, &[b'x'; 2000], [1, 1, 1, 1]);
        assert_eq!(
            read_all(&mut Reader::new(1024), &big),
            Err(ReadError::TooBig)
        );
        let mut fragments = client(0x01, &[b'x'; 600], [1, 1, 1, 1]);
        fragments.extend(client(0x80, &[b'x'; 600], [1, 1, 1, 1]));
        assert_eq!(
            read_all(&mut Reader::new(1024), &fragments),
            Err(ReadError::TooBig),
            "fragments add up"
        );
        let unmasked = [0x89, 0x00];
        assert!(matches!(
            read_all(&mut Reader::new(1024), &unmasked),
            Err(ReadError::Protocol(_))
        ));
        let stray_continuation = client(0x80, b"x", [1, 1, 1, 1]);
        assert!(matches!(
            read_all(&mut Reader::new(1024), &stray_continuation),
            Err(ReadError::Protocol(_))
        ));
    }
}
