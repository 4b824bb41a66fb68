//! The text of a load-test post, `lt:<run>:<seq>:<author>:<due micros>`
//! (then `:xxx...` padding up to a chosen length), and reading it back out
//! of a websocket frame.
//!
//! A frame is parsed in place: find `"postText":"`, check the run, read
//! three numbers. No JSON tree, no allocation, whatever the frame holds.

/// Every post the tool writes starts with this.
pub const TAG: &str = "lt:";

const TEXT_FIELD: &[u8] = b"\"postText\":\"";

/// `min_bytes` pads the text (after a `:`) so that every post weighs what
/// a real one would; 0 leaves the marker alone.
pub fn post_text(run: &str, seq: u32, author: u32, due_micros: u64, min_bytes: usize) -> String {
    let mut text = format!("{TAG}{run}:{seq}:{author}:{due_micros}");
    if text.len() < min_bytes {
        text.push(':');
        let pad = min_bytes.saturating_sub(text.len());
        text.extend(std::iter::repeat_n('x', pad));
    }
    text
}

/// What one of our posts says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub seq: u32,
    /// Index of the author among the run's users.
    pub author: u32,
    /// Unix time in microseconds when the post was due to be sent. A
    /// publisher that falls behind its schedule (the floor's and nchan's
    /// publish one at a time) thus counts its own delay into every
    /// delivery, as a real author would see it.
    pub due_micros: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    Ours(Mark),
    /// A post, but not one of this run's (another run, a real user).
    Foreign,
    /// Not a post frame, or our tag with garbage after it.
    Malformed,
}

pub fn parse_frame(frame: &[u8], run: &str) -> Frame {
    let Some(at) = find(frame, TEXT_FIELD) else {
        return Frame::Malformed;
    };
    let text = &frame[at + TEXT_FIELD.len()..];
    let Some(rest) = text
        .strip_prefix(TAG.as_bytes())
        .and_then(|rest| rest.strip_prefix(run.as_bytes()))
        .and_then(|rest| rest.strip_prefix(b":"))
    else {
        return Frame::Foreign;
    };
    let mut rest = rest;
    let mut number = |end: &[u8]| {
        let (value, after) = leading_number(rest, end)?;
        rest = after;
        Some(value)
    };
    match (number(b":"), number(b":"), number(b"\":")) {
        (Some(seq), Some(author), Some(due_micros)) => {
            match (u32::try_from(seq), u32::try_from(author)) {
                (Ok(seq), Ok(author)) => Frame::Ours(Mark {
                    seq,
                    author,
                    due_micros,
                }),
                _ => Frame::Malformed,
            }
        }
        _ => Frame::Malformed,
    }
}

/// Decimal digits up to one of `ends`: the value and what follows it.
fn leading_number<'a>(bytes: &'a [u8], ends: &[u8]) -> Option<(u64, &'a [u8])> {
    let mut value: u64 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'0'..=b'9' => {
                value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
            }
            _ if ends.contains(&b) && i > 0 => return Some((value, &bytes[i + 1..])),
            _ => return None,
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> String {
        format!(
            r#"{{"postId":"0190a5c4-0000-7000-8000-000000000001","postText":"{text}","author_user_id":"0190a5c4-0000-7000-8000-000000000002"}}"#
        )
    }

    #[test]
    fn reads_back_what_it_wrote() {
        for min_bytes in [0, 200] {
            let text = post_text("ab12", 17, 3, 1_712_345_678_901_234, min_bytes);
            assert!(text.len() >= min_bytes, "{text}");
            assert_eq!(
                parse_frame(frame(&text).as_bytes(), "ab12"),
                Frame::Ours(Mark {
                    seq: 17,
                    author: 3,
                    due_micros: 1_712_345_678_901_234
                })
            );
        }
        assert_eq!(post_text("ab12", 17, 3, 5, 200).len(), 200);
    }

    #[test]
    fn tells_other_runs_and_other_posts_apart() {
        let other_run = post_text("ab123", 1, 0, 5, 0);
        assert_eq!(
            parse_frame(frame(&other_run).as_bytes(), "ab12"),
            Frame::Foreign
        );
        assert_eq!(
            parse_frame(frame("hello").as_bytes(), "ab12"),
            Frame::Foreign
        );
    }

    #[test]
    fn refuses_garbage() {
        for text in [
            "lt:ab12:",
            "lt:ab12:1:2",
            "lt:ab12:1:2:",
            "lt:ab12::2:3",
            "lt:ab12:x:2:3",
            "lt:ab12:1:2:3x",
            "lt:ab12:99999999999:2:3",
            "lt:ab12:1:2:99999999999999999999999",
        ] {
            assert_eq!(
                parse_frame(frame(text).as_bytes(), "ab12"),
                Frame::Malformed,
                "{text}"
            );
        }
        assert_eq!(parse_frame(b"{}", "ab12"), Frame::Malformed);
        assert_eq!(parse_frame(b"", "ab12"), Frame::Malformed);
    }
}
