//! MySQL packet framing and the few packets keyward builds or reads by hand (ERR, the
//! COM_CHANGE_USER watch); handshake packets and auth plugins come from `mysql_common`. Sans I/O.

/// Largest packet accepted during the login (the handshake packets are small).
pub const MAX_LOGIN_PACKET: usize = 1 << 20;

/// The length of the next whole packet (4-byte header + payload) at the start of `buf`.
pub fn packet(buf: &[u8], max: usize) -> Result<Option<usize>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], 0]) as usize;
    if len > max {
        return Err(format!("packet of {len} bytes is larger than {max}"));
    }
    Ok((buf.len() >= 4 + len).then_some(4 + len))
}

/// A packet with sequence id `seq`.
pub fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&len.to_le_bytes()[..3]);
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

/// An ERR packet payload (protocol 4.1: with SQLSTATE).
pub fn err(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut st = state.as_bytes().to_vec();
    st.resize(5, b'0');
    p.extend_from_slice(&st[..5]);
    p.extend_from_slice(message.as_bytes());
    p
}

/// An ERR packet's code, SQLSTATE and message.
pub fn parse_err(payload: &[u8]) -> Option<(u16, String, String)> {
    if payload.first() != Some(&0xff) || payload.len() < 3 {
        return None;
    }
    let code = u16::from_le_bytes([payload[1], payload[2]]);
    let rest = &payload[3..];
    let (state, message) = match rest.split_first() {
        Some((b'#', tail)) if tail.len() >= 5 => {
            (String::from_utf8_lossy(&tail[..5]).into_owned(), &tail[5..])
        }
        _ => ("HY000".to_owned(), rest),
    };
    Some((code, state, String::from_utf8_lossy(message).into_owned()))
}

/// The largest physical packet payload: a packet this long is continued by the next one
/// (one logical packet, as the server's `my_net_read` joins them).
const MAX_PAYLOAD: usize = 0xff_ffff;

/// Tracks the app's side of an established session to find the first packet of each command.
/// Sans I/O.
///
/// What the app sends after the login is a sequence of logical packets (physical packets of
/// [`MAX_PAYLOAD`] bytes continue into the next), each either a command (sequence id 0) or,
/// after a `LOAD DATA LOCAL INFILE` request from the server, file data: numbered 2, 3, ...
/// (wrapping past 255 back to 0) and ended by an empty logical packet. The watch inspects only
/// the first byte of a command; a logical packet with a non-zero sequence id where a command is
/// due starts an upload, which ends at its empty packet — the rule the server follows. An app
/// that sends such a packet without being asked for a file breaks the server's sequence check
/// (`Got packets out of order`), and the server closes the session before it reads another
/// command, so what the watch then forwards as data is never executed.
#[derive(Debug, Default)]
pub struct CommandWatch {
    header: Vec<u8>,
    /// Payload bytes left in the current packet.
    left: usize,
    /// Whether the current logical packet is being dropped.
    dropping: bool,
    /// Whether the current packet's first payload byte is still to be seen (a command).
    first: bool,
    /// Whether the next physical packet continues the current logical one.
    continued: bool,
    /// Whether the app is sending file data (LOAD DATA LOCAL INFILE).
    upload: bool,
    held: Vec<u8>,
    /// The app sent COM_QUIT: the server may now close as it likes.
    pub quit: bool,
    /// Record statement events (audit level `statements`): COM_QUERY and COM_STMT_PREPARE
    /// text.
    pub statements: bool,
    /// The statement being captured (its command byte and text so far).
    statement: Option<(u8, Vec<u8>)>,
    /// Statements captured whole: (`query` or `prepare`, text), for the caller to record.
    pub captured: Vec<(&'static str, String)>,
}

/// COM_QUERY.
const COM_QUERY: u8 = 0x03;
/// COM_STMT_PREPARE.
const COM_STMT_PREPARE: u8 = 0x16;
/// Longest statement text kept for an event.
const MAX_STATEMENT: usize = 64 * 1024;

/// COM_QUIT.
pub const COM_QUIT: u8 = 0x01;

impl CommandWatch {
    /// Feeds app bytes: appends what to forward to `out`, and returns how many commands of type
    /// `command` were dropped (whole logical packets).
    pub fn feed(&mut self, mut input: &[u8], command: u8, out: &mut Vec<u8>) -> usize {
        let mut dropped = 0;
        while !input.is_empty() {
            if self.left == 0 && !self.first {
                // Reading a header.
                let need = 4 - self.header.len();
                let take = need.min(input.len());
                self.header.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.header.len() < 4 {
                    continue;
                }
                let h = std::mem::take(&mut self.header);
                self.left = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
                let starts = !std::mem::replace(&mut self.continued, self.left == MAX_PAYLOAD);
                if starts {
                    self.dropping = false;
                    if self.upload {
                        // File data; the empty logical packet ends the upload.
                        self.upload = self.left > 0;
                    } else if h[3] != 0 {
                        // Data the server asked for (or a sequence error it will refuse).
                        self.upload = self.left > 0;
                    } else if self.left > 0 {
                        self.first = true;
                        self.held = h;
                        continue;
                    }
                }
                if !self.dropping {
                    out.extend_from_slice(&h);
                }
                continue;
            }
            let mut skip = 0;
            if self.first {
                self.first = false;
                self.quit |= input[0] == COM_QUIT;
                self.dropping = input[0] == command;
                if self.dropping {
                    dropped += 1;
                    self.held.clear();
                } else {
                    out.append(&mut self.held);
                }
                if self.statements && matches!(input[0], COM_QUERY | COM_STMT_PREPARE) {
                    self.statement = Some((input[0], Vec::new()));
                    skip = 1;
                }
            }
            let take = self.left.min(input.len());
            if !self.dropping {
                out.extend_from_slice(&input[..take]);
            }
            if let Some((_, text)) = &mut self.statement {
                let room = MAX_STATEMENT.saturating_sub(text.len());
                let part = &input[skip.min(take)..take];
                text.extend_from_slice(&part[..part.len().min(room)]);
            }
            self.left -= take;
            input = &input[take..];
            if self.left == 0 && !self.continued {
                if let Some((command, text)) = self.statement.take() {
                    let kind = if command == COM_QUERY {
                        "query"
                    } else {
                        "prepare"
                    };
                    self.captured
                        .push((kind, String::from_utf8_lossy(&text).into_owned()));
                }
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_need_their_whole_length() {
        let p = frame(3, b"hello");
        for cut in 0..p.len() {
            assert_eq!(packet(&p[..cut], 100), Ok(None));
        }
        assert_eq!(packet(&p, 100), Ok(Some(9)));
        assert!(packet(&frame(0, &[0; 200]), 100).is_err());
    }

    #[test]
    fn err_packets_round_trip() {
        let e = err(1045, "28000", "keyward: no");
        assert_eq!(
            parse_err(&e),
            Some((1045, "28000".to_owned(), "keyward: no".to_owned()))
        );
        assert_eq!(
            parse_err(&[0xff, 0x10, 0x04, b'B', b'a', b'd']),
            Some((1040, "HY000".to_owned(), "Bad".to_owned()))
        );
        assert_eq!(parse_err(&[0x00]), None);
    }

    #[test]
    fn change_user_commands_are_dropped_in_any_split() {
        let stream = [
            frame(0, b"\x03SELECT 1"),
            frame(0, b"\x11app\0\0"),
            frame(0, b"\x0e"),
            frame(1, b"\x11not-a-command"),
        ]
        .concat();
        let expected = [
            frame(0, b"\x03SELECT 1"),
            frame(0, b"\x0e"),
            frame(1, b"\x11not-a-command"),
        ]
        .concat();
        for cut in 0..stream.len() {
            let mut w = CommandWatch::default();
            let mut out = Vec::new();
            let n = w.feed(&stream[..cut], 0x11, &mut out) + w.feed(&stream[cut..], 0x11, &mut out);
            assert_eq!((n, &out), (1, &expected), "split at {cut}");
        }
    }

    #[test]
    fn query_and_prepare_texts_are_captured_in_any_split_and_nothing_else() {
        let long = format!("\x03SELECT '{}'", "x".repeat(MAX_PAYLOAD));
        let stream = [
            frame(0, b"\x03SELECT 1"),
            frame(0, b"\x16INSERT INTO t VALUES (?)"),
            frame(0, b"\x17\x01\0\0\0bind-value"),
            frame(0, b"\x0e"),
            frame(0, &long.as_bytes()[..MAX_PAYLOAD]),
            frame(1, &long.as_bytes()[MAX_PAYLOAD..]),
        ]
        .concat();
        for cut in [0, 1, 4, 5, 9, 12, 20, 40, 60, 1000, stream.len() - 3] {
            let mut w = CommandWatch {
                statements: true,
                ..CommandWatch::default()
            };
            let mut out = Vec::new();
            w.feed(&stream[..cut], 0x11, &mut out);
            w.feed(&stream[cut..], 0x11, &mut out);
            assert_eq!(out, stream, "passed on unchanged (split at {cut})");
            assert_eq!(w.captured.len(), 3, "split at {cut}");
            assert_eq!(w.captured[0], ("query", "SELECT 1".to_owned()));
            assert_eq!(
                w.captured[1],
                ("prepare", "INSERT INTO t VALUES (?)".to_owned())
            );
            assert_eq!(w.captured[2].1.len(), MAX_STATEMENT, "cut short");
        }
        let mut off = CommandWatch::default();
        let mut out = Vec::new();
        off.feed(&stream, 0x11, &mut out);
        assert!(off.captured.is_empty());
    }

    #[test]
    fn com_quit_is_noticed_only_as_a_command() {
        let mut w = CommandWatch::default();
        let mut out = Vec::new();
        w.feed(
            &[
                frame(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t"),
                frame(2, b"\x01data"),
                frame(3, b""),
            ]
            .concat(),
            0x11,
            &mut out,
        );
        assert!(!w.quit);
        w.feed(&frame(0, &[COM_QUIT]), 0x11, &mut out);
        assert!(w.quit);
    }

    /// LOAD DATA LOCAL INFILE: file data is numbered from 2 and wraps past 255 to 0; a data
    /// packet that starts with 0x11 at sequence id 0 is data, not COM_CHANGE_USER (it was
    /// dropped, and the upload broken). After the empty packet that ends the upload, commands
    /// are watched again.
    #[test]
    fn upload_data_with_a_wrapped_sequence_id_is_not_a_command() {
        let mut stream = frame(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t");
        let mut seq = 2u8;
        for _ in 0..300 {
            stream.extend(frame(seq, b"\x11\x11\x11 data\n"));
            seq = seq.wrapping_add(1);
        }
        stream.extend(frame(seq, b""));
        let forwarded = stream.clone();
        stream.extend(frame(0, b"\x11root\0\0"));
        stream.extend(frame(0, b"\x0e"));
        let expected = [forwarded, frame(0, b"\x0e")].concat();
        for cut in [0, 1, 4, 5, 60, 1000, stream.len() - 9, stream.len()] {
            let mut w = CommandWatch::default();
            let mut out = Vec::new();
            let n = w.feed(&stream[..cut], 0x11, &mut out) + w.feed(&stream[cut..], 0x11, &mut out);
            assert_eq!(n, 1, "split at {cut}");
            assert!(out == expected, "split at {cut}");
        }
    }

    /// An empty file: the upload is only its empty packet.
    #[test]
    fn an_empty_upload_ends_at_once() {
        let stream = [
            frame(0, b"\x03LOAD DATA LOCAL INFILE 'none' INTO TABLE t"),
            frame(2, b""),
            frame(0, b"\x11root\0\0"),
        ]
        .concat();
        let mut out = Vec::new();
        assert_eq!(CommandWatch::default().feed(&stream, 0x11, &mut out), 1);
        assert_eq!(out, stream[..stream.len() - 11]);
    }

    /// A logical packet longer than 16 MiB - 1 continues over physical packets; their first
    /// bytes are payload, and a dropped command is dropped whole.
    #[test]
    fn continuation_packets_are_part_of_their_command() {
        let big = |first: u8| {
            let mut p = vec![b'x'; MAX_PAYLOAD];
            p[0] = first;
            p
        };
        let query = [
            frame(0, &big(0x03)),
            frame(1, &[0x11; 10]),
            frame(0, b"\x0e"),
        ]
        .concat();
        let mut out = Vec::new();
        assert_eq!(CommandWatch::default().feed(&query, 0x11, &mut out), 0);
        assert!(out == query);
        let change_user = [frame(0, &big(0x11)), frame(1, b"rest"), frame(0, b"\x0e")].concat();
        let mut out = Vec::new();
        assert_eq!(
            CommandWatch::default().feed(&change_user, 0x11, &mut out),
            1
        );
        assert_eq!(out, frame(0, b"\x0e"));
        // An upload chunk of exactly MAX_PAYLOAD bytes followed by an empty packet: the empty
        // packet ends that chunk, not the upload.
        let upload = [
            frame(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t"),
            frame(2, &big(b'a')),
            frame(3, b""),
            frame(4, b"\x11more"),
            frame(5, b""),
            frame(0, b"\x11root\0\0"),
        ]
        .concat();
        let mut out = Vec::new();
        assert_eq!(CommandWatch::default().feed(&upload, 0x11, &mut out), 1);
        assert!(out == upload[..upload.len() - 11]);
    }

    /// The fuzz target's property over a seeded corpus.
    #[test]
    fn change_user_watch_split_invariance_over_a_seeded_corpus() {
        let seed = [
            frame(0, b"\x03SELECT 1"),
            frame(0, b"\x11app\0\0"),
            frame(0, &[0x16; 70]),
        ]
        .concat();
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..400 {
            let mut m = seed.clone();
            for _ in 0..rng.usize(0..6) {
                let i = rng.usize(..m.len());
                m[i] = rng.u8(..);
            }
            let mut whole = Vec::new();
            let n = CommandWatch::default().feed(&m, 0x11, &mut whole);
            let cut = rng.usize(..=m.len());
            let mut w = CommandWatch::default();
            let mut parts = Vec::new();
            let k = w.feed(&m[..cut], 0x11, &mut parts) + w.feed(&m[cut..], 0x11, &mut parts);
            assert_eq!((n, whole), (k, parts), "{m:?} at {cut}");
        }
    }
}
